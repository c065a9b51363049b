"""Which Ray stage plan (CPUs per stage, classifier batch) counts fastest on this machine? (issue 16)

Usage:
    python benchmarks/ray_stageplan.py [--fields 250] [--repeat 2] [--json benchmarks/results/ray_stageplan.json]

One pipeline loaded once; for each plan, ``pipe.run(FIELDS, OUT, counter=RayCounter("local", plan))`` on the
same generated 640x480 fields (``count_speed.make_fields``), plans interleaved and their order rotated per
repeat. Each run starts and stops its own local Ray instance, so every plan pays the same start-up: compare
fields/s between plans, not with a local run (``ray_overhead.py`` does that). The best of the repeats is kept.
On one 2-core machine this says how the stages share two cores; on a cluster the pool sizes grow with the
cores and the answer may differ.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from count_speed import make_fields  # the same fields as the speed benchmark

#: Plans compared: the default first, then one change at a time.
PLANS: dict[str, dict[str, Any]] = {
    "default": {},
    "classify_batch_8": {"classify_batch": 8},
    "classify_batch_32": {"classify_batch": 32},
    "decode_0.25": {"decode_cpus": 0.25},
    "detect_1.0": {"detect_cpus": 1.0, "classify_cpus": 0.5},
    "classify_1.0": {"detect_cpus": 0.5, "classify_cpus": 1.0},
}


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fields", type=int, default=250)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    from hemocount import Pipeline
    from hemocount.cluster.counter import RayCounter, StagePlan

    tmp = Path(tempfile.mkdtemp(prefix="hemocount-stageplan-"))
    try:
        src = tmp / "fields"
        make_fields(a.fields, src)
        pipe = Pipeline.from_pretrained()
        runs: list[dict[str, Any]] = []
        names = list(PLANS)
        for r in range(a.repeat):
            for name in names[r % len(names):] + names[:r % len(names)]:
                plan = StagePlan(**PLANS[name])
                out = tmp / f"out_{name}_{r}"
                t0 = time.perf_counter()
                pipe.run(src, out, counter=RayCounter("local", plan), progress=False, report=False)
                wall = time.perf_counter() - t0
                run = json.loads((out / "run.json").read_text())
                runs.append({"plan": name, "repeat": r, "stages": asdict(plan), "wall_s": round(wall, 2),
                             "fields_per_s": round(a.fields / wall, 2),
                             "driver_cpu_seconds": run["execution"]["driver_cpu_seconds"]})
                print(f"repeat {r} {name:18s} {wall:6.1f} s ({a.fields / wall:5.1f} fields/s)", flush=True)
                shutil.rmtree(out)
        best = {n: max(x["fields_per_s"] for x in runs if x["plan"] == n) for n in names}
        res = {"date": time.strftime("%Y-%m-%d"), "cores": len(os.sched_getaffinity(0)), "fields": a.fields,
               "repeat": a.repeat, "load_average_end": round(os.getloadavg()[0], 1),
               "best_fields_per_s": best, "runs": runs}
        print(json.dumps(best, indent=1))
        if a.json:
            a.json.write_text(json.dumps(res, indent=1) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
