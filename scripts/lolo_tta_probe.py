"""Does 8-way flip/rotation test-time averaging lift held-out-lab macro-F1? (inference only, LOLO folds)

    python scripts/lolo_tta_probe.py --recipe inorm_gray25_rbc25_e12 --split val

Prints, per held-out lab, macro-F1 (classes with >= 10 distinct cells) of the fold's plain predictions and of
the mean of its probabilities over the 8 flips/rotations of each crop. Measured 2026-12-03 on val: no gain
(BCCD 0.714, Tecom 0.547, LISC 0.816 unchanged; PBC 0.765 -> 0.754), so ``count`` does not average views.
"""

from __future__ import annotations

import argparse

import numpy as np

from hemocount.classify.data import load_cells
from hemocount.classify.infer import Classifier
from hemocount.classify.lolo import holdout_cells, holdout_report
from hemocount.classify.sources import SUBTYPE_SOURCES
from hemocount.classify.train import classifier_crops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", required=True, help="fold runs are runs/lolo_RECIPE_LAB/best.pt")
    ap.add_argument("--split", default="val", choices=("val", "dev"))
    a = ap.parse_args()
    cells_all = load_cells("wbc_subtype", None, sources=list(SUBTYPE_SOURCES))
    for lab in SUBTYPE_SOURCES:
        clf = Classifier.from_weights(f"runs/lolo_{a.recipe}_{lab}/best.pt", task="wbc_subtype", engine="torch")
        cells = holdout_cells(cells_all, lab, a.split)
        crops = classifier_crops(clf, cells)
        views = [np.rot90(crops, k, axes=(1, 2)) for k in range(4)]
        views += [v[:, :, ::-1] for v in views]
        probs = [clf.predict_crops(np.ascontiguousarray(v)) for v in views]
        plain = holdout_report(cells, probs[0], clf.classes)["per_crop"]["macro_f1_eligible"]
        tta = holdout_report(cells, np.mean(probs, 0), clf.classes)["per_crop"]["macro_f1_eligible"]
        print(f"{lab} {a.split}: plain {plain}  8-view mean {tta}", flush=True)


if __name__ == "__main__":
    main()
