"""Leave-one-lab-out (LOLO) evaluation of the WBC-subtype classifier on the lab a run never saw.

Counting rules (issue 14): a held-out lab's macro-F1 averages only the classes with at least
:data:`MIN_DISTINCT` distinct cells there; the others are reported, not averaged. LISC holds 3-22
shifted crops of each physical cell (a ``group``): metrics are computed per crop (every crop of the
split, as ``count`` would see them) and per cell (the crops' mean probability, one vote per group),
and distinct cells are counted by group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hemocount.classify.data import CellSample
from hemocount.io import atomic_write_json

#: Classes with fewer distinct cells than this on the held-out split are reported but not averaged.
MIN_DISTINCT = 10
#: ``dev`` = the held-out lab's train + val cells: never seen by a fold that holds the lab out.
HOLDOUT_SPLITS = ("train", "val", "test", "dev")


def holdout_cells(cells: list[CellSample], holdout: str, split: str) -> list[CellSample]:
    """Cells of lab ``holdout`` in ``split`` (``dev`` = train + val)."""
    wanted = ("train", "val") if split == "dev" else (split,)
    return [c for c in cells if c.source == holdout and c.split in wanted]


def group_probs(cells: list[CellSample], probs: np.ndarray) -> tuple[list[CellSample], np.ndarray]:
    """One row per physical cell: the mean probability over its crops (cells without a group stay as they are)."""
    order: dict[str, list[int]] = {}
    for i, c in enumerate(cells):
        order.setdefault(c.group or c.id, []).append(i)
    reps = [cells[ix[0]] for ix in order.values()]
    return reps, np.stack([probs[ix].mean(axis=0) for ix in order.values()]) if reps else probs[:0]


def eligible_macro_f1(report: dict[str, Any], distinct: dict[str, int], min_cells: int = MIN_DISTINCT) -> dict[str, Any]:
    """Macro-F1 over the classes with at least ``min_cells`` distinct cells, and which classes those are."""
    classes = [c for c, n in sorted(distinct.items()) if n >= min_cells]
    f1s = [report["per_class"][c]["f1"] or 0.0 for c in classes]
    return {"macro_f1_eligible": round(float(np.mean(f1s)), 4) if f1s else None, "eligible_classes": classes,
            "min_distinct_cells": min_cells}


def holdout_report(cells: list[CellSample], probs: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """Per-crop and per-cell metrics of one held-out lab, with the eligible-class macro-F1 of each."""
    from hemocount.classify.metrics import classification_report
    from hemocount.classify.sources import distinct_cells

    index = {c: i for i, c in enumerate(classes)}
    distinct = distinct_cells(cells)
    out: dict[str, Any] = {"distinct_cells": distinct}
    reps, cell_probs = group_probs(cells, probs)
    for name, cs, p in (("per_crop", cells, probs), ("per_cell", reps, cell_probs)):
        rep = classification_report(np.array([index[c.label] for c in cs]), p, classes)
        rep.update(eligible_macro_f1(rep, distinct))
        out[name] = rep
    return out


def new_lab_reports(clf: Any, split: str, data_root: str | None,
                    labs: tuple[str, ...] = ("pbc", "lisc")) -> dict[str, dict[str, Any]]:
    """:func:`holdout_report` of classifier ``clf`` on each lab's ``split`` rows of ``wbc_sources.csv`` (the
    ``pbc_wbc`` and LISC rows outside the committed split)."""
    from hemocount.classify.sources import read_source_rows
    from hemocount.classify.train import classifier_crops

    rows = read_source_rows(data_root)
    out = {}
    for lab in labs:
        cells = [c for c in rows if c.source == lab and c.split == split]
        out[lab] = holdout_report(cells, clf.predict_crops(classifier_crops(clf, cells)), clf.classes)
    return out


def evaluate_holdout(*, weights: str, holdout: str, split: str, data_root: str | None, out: Path | None = None,
                     engine: str = "torch") -> dict[str, Any]:
    """Metrics of a LOLO run's ``weights`` on lab ``holdout``'s ``split`` (refuses a run that trained on it)."""
    from hemocount.classify.data import load_cells
    from hemocount.classify.infer import Classifier
    from hemocount.classify.sources import SUBTYPE_SOURCES
    from hemocount.classify.train import classifier_crops
    from hemocount.errors import HemocountError

    if split not in HOLDOUT_SPLITS:
        raise HemocountError(f"unknown split {split!r}; valid: {', '.join(HOLDOUT_SPLITS)}")
    clf = Classifier.from_weights(weights, task="wbc_subtype", engine=engine)
    trained_out = clf.meta.get("holdout", "")
    if trained_out != holdout:
        raise HemocountError(f"{weights} held out {trained_out or 'no lab'}, not {holdout}: "
                             "its metrics on this lab would not be leave-one-lab-out")
    cells = holdout_cells(load_cells("wbc_subtype", data_root, sources=list(SUBTYPE_SOURCES)), holdout, split)
    probs = clf.predict_crops(classifier_crops(clf, cells))
    res: dict[str, Any] = {"weights": str(weights), "sha256": clf.weights.sha256, "holdout": holdout, "split": split,
                           "recipe": clf.meta.get("recipe_name", ""), "epoch": clf.meta.get("epoch"),
                           **holdout_report(cells, probs, clf.classes)}
    if out is not None:
        atomic_write_json(out, res)
    return res
