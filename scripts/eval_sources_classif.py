"""Subtype metrics of any checkpoint on the new rows of ``splits/wbc_sources.csv`` (``pbc_wbc``, LISC),
per lab, with the LOLO counting rules (per crop and per cell, classes with >= 10 distinct cells).

    python scripts/eval_sources_classif.py --weights runs/sub_all4_base/best.pt --split test --out FILE.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hemocount.classify.infer import Classifier
from hemocount.classify.lolo import new_lab_reports
from hemocount.io import atomic_write_json


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--data-root")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    clf = Classifier.from_weights(a.weights, task="wbc_subtype", engine="torch")
    res = {"weights": a.weights, "split": a.split}
    for lab, rep in new_lab_reports(clf, a.split, a.data_root).items():
        res[lab] = rep
        v = rep["per_crop"]
        print(f"{lab}: n={v['n']} accuracy {v['accuracy']} macro-F1 {v['macro_f1_eligible']} "
              f"({len(v['eligible_classes'])} classes) all-class {v['macro_f1']}")
    if a.out:
        atomic_write_json(a.out, res)


if __name__ == "__main__":
    main()
