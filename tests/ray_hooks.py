"""Run in every Ray worker of the test cluster (``worker_process_setup_hook``): marks each detector batch a
worker starts and finishes, so a test can find the process holding a batch in flight and show the batch
ran again elsewhere after that process was killed.

Markers are empty files in ``$HEMOCOUNT_TEST_MARKS``: ``start_<pid>_<indices>`` and ``done_<pid>_<indices>``.
While a file ``slow`` there holds a number, each batch waits that many seconds first (time to kill it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def watch_batches() -> None:
    """Wrap :class:`hemocount.cluster.stages.DetectStage` with the markers."""
    from hemocount.cluster import stages

    original = stages.DetectStage.__call__

    def call(self: Any, batch: dict[str, Any]) -> dict[str, Any]:
        marks = Path(os.environ["HEMOCOUNT_TEST_MARKS"])
        ids = "-".join(str(int(i)) for i in batch["index"])
        (marks / f"start_{os.getpid()}_{ids}").touch()
        slow = marks / "slow"
        if slow.exists():
            time.sleep(float(slow.read_text() or 0))
        out = original(self, batch)
        (marks / f"done_{os.getpid()}_{ids}").touch()
        return out

    stages.DetectStage.__call__ = call  # type: ignore[method-assign]
