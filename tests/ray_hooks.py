"""Run in every Ray worker of the test cluster (``worker_process_setup_hook``): marks each detector batch a
worker starts and finishes, so a test can find the process holding a batch in flight and show the batch
ran again elsewhere after that process was killed.

Markers are empty files in ``$HEMOCOUNT_TEST_MARKS``: ``start_<pid>_<indices>`` and ``done_<pid>_<indices>``.
While a file ``slow`` there holds a number, each batch waits that many seconds first (time to kill it).
While a file ``other_version`` is there, a worker loading its models sees a driver of another hemocount.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any


def watch_batches() -> None:
    """Wrap :class:`hemocount.cluster.stages.DetectStage` with the markers, and the models' loading with the
    version switch."""
    from hemocount.cluster import stages

    original = stages.DetectStage.__call__
    original_load = stages.WorkerSpec.load

    def load(self: Any, stage: str, threads: int) -> Any:
        if (Path(os.environ["HEMOCOUNT_TEST_MARKS"]) / "other_version").exists():
            self = dataclasses.replace(self, version="0.0-other")
        return original_load(self, stage, threads)

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
    stages.WorkerSpec.load = load  # type: ignore[method-assign]
