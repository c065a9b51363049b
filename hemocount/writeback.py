"""Per-image outputs written on a background thread, in order, without losing finished work."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger("hemocount")


class OrderedWriter:
    """Runs write jobs one at a time, in submission order, on one background thread.

    Encoding and writing an annotated image overlaps inference of the next images this way (OpenCV
    and file I/O release the GIL). At most ``depth`` jobs wait, since each holds an image; the first
    failure is raised in the caller, at a later :meth:`submit` or at :meth:`drain`.
    """

    def __init__(self, depth: int = 8) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1 (got {depth})")
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hemocount-write")
        self._jobs: deque[Future[Any]] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; waits while ``depth`` jobs are queued (raising a failed job's error)."""
        while len(self._jobs) >= self.depth:
            self._jobs.popleft().result()
        self._jobs.append(self._pool.submit(fn, *args))

    def drain(self) -> None:
        """Wait for every queued job; raises the first failure."""
        while self._jobs:
            self._jobs.popleft().result()

    def close(self) -> None:
        """Finish the queued jobs and stop the thread; failures are logged, not raised (for ``finally``,
        where another error may be on its way up)."""
        while self._jobs:
            try:
                self._jobs.popleft().result()
            except Exception as exc:  # noqa: BLE001 - already failing; keep writing what can be written
                log.debug("background write failed: %s", exc)
        self._pool.shutdown(wait=True)
