"""Does averaging several fold models lift held-out-lab macro-F1? (inference only, LOLO folds)

    python scripts/lolo_ensemble_probe.py --recipes inorm_gray25_rbc25_s1 inorm_gray25_rbc25_csq \
        inorm_gray25_rbc25_hed inorm_gray25_rbc25_hue --split val

For each held-out lab, prints the macro-F1 (classes with >= 10 distinct cells, per crop) of every member fold
``runs/lolo_RECIPE_LAB/best.pt`` and of the mean of their probabilities, then the means over labs; writes
the rows to ``--json`` if given. The members must share crop size and crop scale (checked).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hemocount.classify.data import load_cells
from hemocount.classify.infer import Classifier
from hemocount.classify.lolo import holdout_cells, holdout_report
from hemocount.classify.sources import SUBTYPE_SOURCES
from hemocount.classify.train import classifier_crops
from hemocount.errors import HemocountError


def lab_row(recipes: list[str], lab: str, split: str, cells_all: list) -> dict[str, float]:
    """Macro-F1 of each member and of the ensemble on one held-out lab."""
    clfs = [Classifier.from_weights(f"runs/lolo_{r}_{lab}/best.pt", task="wbc_subtype", engine="torch") for r in recipes]
    if len({(c.size, c.pad, getattr(c, "rbc_k", 0.0)) for c in clfs}) != 1:
        raise HemocountError("members cut different crops; an ensemble of them is not one model's input")
    cells = holdout_cells(cells_all, lab, split)
    crops = classifier_crops(clfs[0], cells)
    probs = [c.predict_crops(crops) for c in clfs]
    row = {r: holdout_report(cells, p, clfs[0].classes)["per_crop"]["macro_f1_eligible"] for r, p in zip(recipes, probs)}
    row["ensemble"] = holdout_report(cells, np.mean(probs, 0), clfs[0].classes)["per_crop"]["macro_f1_eligible"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", required=True, help="fold runs are runs/lolo_RECIPE_LAB/best.pt")
    ap.add_argument("--split", default="val", choices=("val", "test", "dev"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    cells_all = load_cells("wbc_subtype", None, sources=list(SUBTYPE_SOURCES))
    rows = {}
    for lab in SUBTYPE_SOURCES:
        rows[lab] = lab_row(a.recipes, lab, a.split, cells_all)
        print(lab, a.split, json.dumps(rows[lab]), flush=True)
    means = {k: round(float(np.mean([r[k] for r in rows.values()])), 4) for k in [*a.recipes, "ensemble"]}
    print("mean", a.split, json.dumps(means))
    if a.json:
        a.json.write_text(json.dumps({"split": a.split, "recipes": a.recipes, "per_lab": rows, "mean": means}, indent=1))


if __name__ == "__main__":
    main()
