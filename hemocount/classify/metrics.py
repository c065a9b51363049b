"""Classification metrics: the six of the ALL literature, per-class P/R/F1, macro-F1, ROC AUC, confusion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """``n x n`` confusion matrix, rows = true class, columns = predicted class."""
    cm = np.zeros((n, n), dtype=int)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def _div(a: float, b: float) -> float | None:
    return round(float(a) / float(b), 4) if b else None


def binary_metrics(cm: np.ndarray, positive: int = 1) -> dict[str, float | None]:
    """Accuracy, sensitivity, specificity, PPV, NPV and F1 from a 2x2 confusion matrix."""
    neg = 1 - positive
    tp, fn = cm[positive, positive], cm[positive, neg]
    fp, tn = cm[neg, positive], cm[neg, neg]
    sens, ppv = _div(tp, tp + fn), _div(tp, tp + fp)
    return {
        "accuracy": _div(tp + tn, cm.sum()),
        "sensitivity": sens,
        "specificity": _div(tn, tn + fp),
        "ppv": ppv,
        "npv": _div(tn, tn + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
    }


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); None if one class is absent."""
    scores = np.asarray(scores, float)
    positive = np.asarray(positive, bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if not n_pos or not n_neg:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return round(float(u / (n_pos * n_neg)), 4)


def classification_report(y_true: np.ndarray, probs: np.ndarray, classes: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Everything the eval command reports for one set of predictions.

    Args:
        y_true: True class indices.
        probs: ``(N, K)`` predicted probabilities.
        classes: Class names (index order).
    """
    y_true = np.asarray(y_true, int)
    probs = np.asarray(probs, float).reshape(len(y_true), len(classes))
    y_pred = probs.argmax(axis=1) if len(y_true) else np.zeros(0, int)
    k = len(classes)
    cm = confusion(y_true, y_pred, k)
    per_class = {}
    f1s = []
    for i, c in enumerate(classes):
        tp, support, predicted = cm[i, i], cm[i].sum(), cm[:, i].sum()
        p, r = _div(tp, predicted), _div(tp, support)
        f1 = _div(2 * tp, support + predicted)
        per_class[c] = {"precision": p, "recall": r, "f1": f1, "support": int(support),
                        "roc_auc": roc_auc(probs[:, i], y_true == i)}
        if support:
            f1s.append(f1 or 0.0)
    out: dict[str, Any] = {
        "n": int(len(y_true)),
        "accuracy": _div(np.trace(cm), cm.sum()),
        "macro_f1": round(float(np.mean(f1s)), 4) if f1s else None,
        "per_class": per_class,
        "confusion_matrix": {"classes": list(classes), "rows_true_cols_pred": cm.tolist()},
    }
    aucs = [v["roc_auc"] for v in per_class.values() if v["roc_auc"] is not None]
    out["macro_roc_auc"] = round(float(np.mean(aucs)), 4) if aucs else None
    if k == 2:
        out.update(binary_metrics(cm, positive=1))
        out["roc_auc"] = per_class[classes[1]]["roc_auc"]
    return out


def plot_confusion(cm: list[list[int]], classes: list[str], path: Path, title: str) -> Path:
    """Save a confusion-matrix PNG (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(classes), 1.0 + 0.8 * len(classes)), dpi=120)
    ax.imshow(arr, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for (i, j), v in np.ndenumerate(arr):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > arr.max() / 2 else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
