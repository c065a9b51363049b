"""Time of ``from hemocount import Pipeline``, ``Pipeline.from_pretrained(engine=E)`` and the first
``pipe(image)`` on a shipped sample, wall and CPU.

Usage:
    python benchmarks/load_time.py [openvino|onnx|torch|auto] [label]

Run it in a fresh process per measurement (imports are what it measures); CPU seconds (``process_time``,
all threads) say more than wall seconds on a busy machine. Prints one line: import, load, their total
and the first call (supervision's import, overlapped with the load, ends there if it had not), wall and
CPU, and the peak RSS.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

#: A shipped sample field (640 x 480, one WBC): the first call's cost, not a speed benchmark.
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "BloodImage_00167.jpg"


def main() -> None:
    engine = sys.argv[1] if len(sys.argv) > 1 else "auto"
    label = sys.argv[2] if len(sys.argv) > 2 else ""
    t0, c0 = time.perf_counter(), time.process_time()
    from hemocount import Pipeline

    t1, c1 = time.perf_counter(), time.process_time()
    pipe = Pipeline.from_pretrained(engine=engine)
    t2, c2 = time.perf_counter(), time.process_time()
    pipe(SAMPLE)
    t3, c3 = time.perf_counter(), time.process_time()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{label} {engine}: wall import {t1 - t0:.2f} load {t2 - t1:.2f} total {t2 - t0:.2f} first call "
          f"{t3 - t2:.2f} s | cpu import {c1 - c0:.2f} load {c2 - c1:.2f} total {c2 - c0:.2f} first call "
          f"{c3 - c2:.2f} s | peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
