"""Does a slide's WBCs' *colour* tell a lab the subtype classifier never saw? (issue 14, item 4; no model)

    python benchmarks/wbc_stain_shift.py --split val  --json benchmarks/results/wbc_stain_shift_val.json
    python benchmarks/wbc_stain_shift.py --split test --json benchmarks/results/wbc_stain_shift_test.json

Why: the v3 subtype recipe normalises each crop's channels and trains on grey crops half the time, so its
features are built to *ignore* stain; the feature-distance check (``classif_domain_shift.py``) then finds
unseen labs familiar. Stain is still what differs most between labs, and it needs no model: every WBC crop
(as the shipped subtype model cuts it: 64 px, 3 red-cell diameters a side) is described by the nine stain
numbers the field check uses (:func:`hemocount.domain.stain_features`: Lab colour of its background, its
stained pixels and its darkest pixels, i.e. plasma, cells and the nucleus).

Leave-one-lab-out over BCCD, Tecom, PBC and LISC: each of the three training labs is a Gaussian of its
*train* crops' vectors (:class:`hemocount.domain.StainReference`); a simulated healthy slide (normal adult
differential, ``hemocount.classify.allflag.healthy_slides``) scores the distance of its WBCs' mean vector to
the nearest training lab; the threshold is set on the training labs' *val* slides of 20 WBCs (at most 5 %
of each lab's flagged, as the shipped check does) and applied to every size. Reported on ``--split``: the
share of slides flagged per lab (held-out: should be high; training labs: false alarms).

Caveats: crops from crop datasets (one lab's framing each), simulated slides drawn with replacement (BCCD and
Tecom have few cells), four Wright/Giemsa-type labs only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LABS = ("bccd", "tecom", "pbc", "lisc")
SLIDE_SIZES = (20, 50, 100, 200)
FALSE_ALARM = 0.05


def crop_vectors(cells: list[Any]) -> np.ndarray:
    """The nine stain features of each cell's crop as the shipped subtype model cuts it (``n x 9``)."""
    from hemocount.classify.familiarity import crop_stain_vectors
    from hemocount.classify.infer import Classifier
    from hemocount.classify.train import classifier_crops

    clf = Classifier.from_weights(None, task="wbc_subtype", engine="torch")
    return crop_stain_vectors(classifier_crops(clf, cells))


def run_fold(lab: str, split: str, data: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
             n_slides: int) -> dict[str, Any]:
    """One fold: reference and 20-WBC threshold from the other three labs (the product's functions, as
    ``release_weights.py refit-domain`` fits the shipped check), then the share of each lab's simulated
    ``split`` slides flagged per size."""
    from hemocount.classify.familiarity import simulated_slide_means, stain_slide_thresholds
    from hemocount.domain import StainReference

    inside = [s for s in LABS if s != lab]
    ref = StainReference.fit({s: data["train"][s][0] for s in inside})
    th = stain_slide_thresholds(ref, {s: data["val"][s] for s in inside}, (20,), n_slides, FALSE_ALARM)[20]
    rates: dict[str, dict[str, float]] = {}
    for n in SLIDE_SIZES:
        rates[str(n)] = {}
        for i, s in enumerate(LABS):
            vec, truth = data[split][s]
            means = simulated_slide_means(np.asarray(vec, np.float64), truth, n, n_slides, 7919 + 100 * i + n)
            rates[str(n)][s] = round(float(np.mean([ref.distance(m) > th for m in means])), 4)
    return {"threshold": round(th, 3), "flagged": rates}


def main() -> None:
    """Command-line entry point."""
    from hemocount.classify.sources import load_subtype_sources

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--slides", type=int, default=1000)
    ap.add_argument("--data-root")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    t0 = time.time()
    cells = load_subtype_sources(LABS, a.data_root)
    data: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for sp in sorted({"train", "val", a.split}):
        data[sp] = {}
        for s in LABS:
            sel = [c for c in cells if c.split == sp and c.source == s]
            data[sp][s] = (crop_vectors(sel), np.array([c.label for c in sel]))
    res: dict[str, Any] = {"split": a.split, "n_slides": a.slides, "false_alarm_on_val": FALSE_ALARM,
                           "cells": {sp: {s: len(v[1]) for s, v in d.items()} for sp, d in data.items()}, "folds": {}}
    for lab in LABS:
        res["folds"][lab] = fold = run_fold(lab, a.split, data, a.slides)
        row = " ".join(f"n={n}: held-out {r[lab]:.3f} training labs max "
                       f"{max(v for k, v in r.items() if k != lab):.3f}" for n, r in fold["flagged"].items())
        print(f"fold {lab} (threshold {fold['threshold']:.2f}) {row}", flush=True)
    res["seconds"] = round(time.time() - t0, 1)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
