"""Time of ``from hemocount import Pipeline`` and ``Pipeline.from_pretrained(engine=E)``, wall and CPU.

Usage:
    python benchmarks/load_time.py [openvino|onnx|torch|auto] [label]

Run it in a fresh process per measurement (imports are what it measures); CPU seconds (``process_time``,
all threads) say more than wall seconds on a busy machine. Prints one line: import, load and total, wall
and CPU, and the peak RSS.
"""

from __future__ import annotations

import resource
import sys
import time


def main() -> None:
    engine = sys.argv[1] if len(sys.argv) > 1 else "auto"
    label = sys.argv[2] if len(sys.argv) > 2 else ""
    t0, c0 = time.perf_counter(), time.process_time()
    from hemocount import Pipeline

    t1, c1 = time.perf_counter(), time.process_time()
    Pipeline.from_pretrained(engine=engine)
    t2, c2 = time.perf_counter(), time.process_time()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{label} {engine}: wall import {t1 - t0:.2f} load {t2 - t1:.2f} total {t2 - t0:.2f} s | "
          f"cpu import {c1 - c0:.2f} load {c2 - c1:.2f} total {c2 - c0:.2f} s | peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
