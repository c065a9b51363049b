"""Held-out evaluation of a WBC classifier: overall, per source, confusion-matrix images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hemocount.io import atomic_write_json


def evaluate_classifier(*, task: str, weights: str | None, data_root: str | None, split: str = "test",
                        out: Path | None = None, engine: str = "auto", precision: str = "auto") -> dict[str, Any]:
    """Metrics of classifier ``weights`` on the committed ``split`` of ``task``.

    ``engine`` and ``precision`` are as for ``count`` (see ``hemocount.engine``).
    """
    from hemocount.classify.data import load_cells
    from hemocount.classify.infer import Classifier
    from hemocount.classify.metrics import classification_report, plot_confusion
    from hemocount.classify.train import classifier_crops

    clf = Classifier.from_weights(weights, task=task, engine=engine, precision=precision)
    cells = [c for c in load_cells(task, data_root) if c.split == split]
    index = {c: i for i, c in enumerate(clf.classes)}
    probs = clf.predict_crops(classifier_crops(clf, cells))
    y = np.array([index[c.label] for c in cells])
    res: dict[str, Any] = {"weights": clf.weights.id, "sha256": clf.weights.sha256, "task": task, "split": split,
                           "engine": clf.engine, "precision": clf.precision,
                           "overall": classification_report(y, probs, clf.classes), "per_source": {}}
    for src in sorted({c.source for c in cells}):
        m = np.array([c.source == src for c in cells])
        res["per_source"][src] = classification_report(y[m], probs[m], clf.classes)
    if out is not None:
        cm = res["overall"]["confusion_matrix"]
        plot_confusion(cm["rows_true_cols_pred"], cm["classes"], out / f"confusion_{task}_{split}.png",
                       f"{clf.weights.id} {task}/{split} (n={len(cells)})")
        atomic_write_json(out / f"metrics_{task}_{split}.json", res)
    return res
