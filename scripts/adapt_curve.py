"""Leave-one-lab-out adaptation curve of the WBC-subtype classifier (issue 14, item 5).

For each held-out lab: its LOLO fold (runs/lolo_base_LAB/best.pt), adapted with `hemocount adapt classify`'s
recipe on N = 5, 10, 20 labelled distinct cells per class of the lab's train/val rows (3 draws each), scored
on the lab's test split. Resumable (each adaptation's result is kept under --out). Writes the JSON of every
run and the plot.

    HEMOCOUNT_DATA=../shared/data nice -n 19 python scripts/adapt_curve.py --labs pbc lisc bccd tecom
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labs", nargs="+", default=["pbc", "lisc", "bccd", "tecom"])
    ap.add_argument("--folds", default="runs/lolo_base_{lab}/best.pt", help="fold checkpoint per lab")
    ap.add_argument("--out", type=Path, default=ROOT / "runs/adapt_curve", help="run folder (crops, checkpoints)")
    ap.add_argument("--json", type=Path, default=ROOT / "weights/eval/adapt_curve.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs/adapt_curve.png")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--collect-only", action="store_true",
                    help="start no adaptation: tables, JSON and plot from the runs finished so far")
    args = ap.parse_args(argv)
    os.environ["HEMOCOUNT_THREADS"] = str(args.threads)  # read by every training/inference call below
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from hemocount.classify.adapt_curve import CELLS_PER_CLASS, SEEDS, plot, run_lab, table
    from hemocount.io import atomic_write_json
    from hemocount.runtime import set_threads

    set_threads(args.threads)
    results = {}
    for lab in args.labs:
        results[lab] = run_lab(lab, ROOT / args.folds.format(lab=lab), args.out, collect_only=args.collect_only)
        atomic_write_json(args.json, {
            "protocol": "LOLO fold of LAB adapted with `hemocount adapt classify` defaults on N distinct cells per "
                        "class of LAB's train+val rows (nested draws, seeds), scored on LAB's test split; "
                        "macro_f1 = per-cell macro-F1 over classes with >= 10 distinct test cells",
            "cells_per_class": list(CELLS_PER_CLASS), "seeds": list(SEEDS), "command": " ".join(sys.argv),
            "labs": results})
        plot(results, args.plot)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
