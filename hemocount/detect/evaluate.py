"""Detector evaluation: COCO mAP with pycocotools, and counting error per class."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import supervision as sv

from hemocount import CELL_CLASSES
from hemocount.datasets.formats import xyxy_to_coco
from hemocount.datasets.records import AnnotatedImage
from hemocount.datasets.writers import to_coco

#: Confidence used to collect detections for mAP (the whole precision/recall curve).
MAP_CONF = 0.001


def predict_records(detector: Any, records: list[AnnotatedImage], *, iou: float, max_det: int,
                    batch: int = 8) -> list[sv.Detections]:
    """Run ``detector`` at :data:`MAP_CONF` over the records' images."""
    from hemocount.io import read_image

    conf = {c: MAP_CONF for c in CELL_CLASSES}
    out: list[sv.Detections] = []
    for s in range(0, len(records), batch):
        imgs = [read_image(r.path) for r in records[s:s + batch]]
        out.extend(detector.predict(imgs, conf=conf, iou=iou, max_det=max_det))
    return out


class ScaledDetector:
    """The detector interface ``evaluate`` needs, over a :class:`~hemocount.pipeline.Pipeline`'s detection at
    the normalised scale: what ``count`` finds, for ``eval detect --scale auto``. Build the pipeline with
    ``conf=MAP_CONF`` so that it keeps the whole precision/recall curve."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.weights = pipe.detector.weights

    def predict(self, images: list[np.ndarray], **_ignored: Any) -> list[sv.Detections]:
        """Detections per image; thresholds, NMS and caps are the pipeline's own."""
        return self.pipe.detect(images)[0]


def coco_map(records: list[AnnotatedImage], preds: list[sv.Detections]) -> dict[str, Any]:
    """mAP50, mAP50-95 and per-class AP with pycocotools' COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = to_coco(records)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    dts = []
    for img_id, d in enumerate(preds, 1):
        for box, s, c in zip(d.xyxy.tolist(), d.confidence.tolist(), d.class_id.tolist()):
            dts.append({"image_id": img_id, "category_id": int(c) + 1, "bbox": xyxy_to_coco(box), "score": float(s)})
    if not dts:
        return {"mAP50": 0.0, "mAP50_95": 0.0, "per_class": {c: {"AP50": 0.0, "AP50_95": 0.0} for c in CELL_CLASSES}}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dts)
        ev = COCOeval(gt, dt, "bbox")
        # Up to 1000 detections per image: dense RBC fields exceed COCO's default 100.
        ev.params.maxDets = [1, 100, 1000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]  # [T, R, K, A, M]

    def ap(k: int | slice, t: int | slice) -> float:
        p = prec[t, :, k, 0, -1]
        p = p[p > -1]
        return round(float(p.mean()), 4) if p.size else None  # None: class absent from the ground truth

    per_class = {c: {"AP50": ap(k, 0), "AP50_95": ap(k, slice(None)),
                     "instances": int(sum(c == x for r in records for x in r.classes))}
                 for k, c in enumerate(CELL_CLASSES)}
    return {"mAP50": ap(slice(None), 0), "mAP50_95": ap(slice(None), slice(None)),
            "per_class": per_class}


def count_errors(records: list[AnnotatedImage], preds: list[sv.Detections], conf: dict[str, float]) -> dict[str, Any]:
    """Counting error per class at the operating thresholds ``conf``.

    Returns per class: ``mae`` (cells per image), ``mape`` (over images with true > 0),
    ``accuracy`` (1 - sum|pred - true| / sum true, pooled), and the pooled totals.
    """
    out: dict[str, Any] = {}
    for k, c in enumerate(CELL_CLASSES):
        true = np.array([sum(x == c for x in r.classes) for r in records], dtype=float)
        pred = np.array([int(np.sum((d.class_id == k) & (d.confidence >= conf[c]))) for d in preds], dtype=float)
        err = np.abs(pred - true)
        pos = true > 0
        out[c] = {
            "mae": round(float(err.mean()), 3) if len(err) else None,
            "mape": round(float((err[pos] / true[pos]).mean()), 4) if pos.any() else None,
            "accuracy": round(float(1 - err.sum() / true.sum()), 4) if true.sum() else None,
            "true_total": int(true.sum()), "pred_total": int(pred.sum()),
        }
    return out


def _match(pred: np.ndarray, true: np.ndarray, iou: float = 0.5) -> int:
    """True positives: greedy one-to-one matching of predicted to true boxes (highest IoU first)."""
    if len(pred) == 0 or len(true) == 0:
        return 0
    x1 = np.maximum(pred[:, None, 0], true[None, :, 0])
    y1 = np.maximum(pred[:, None, 1], true[None, :, 1])
    x2 = np.minimum(pred[:, None, 2], true[None, :, 2])
    y2 = np.minimum(pred[:, None, 3], true[None, :, 3])
    inter = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_t = (true[:, 2] - true[:, 0]) * (true[:, 3] - true[:, 1])
    ious = inter / (area_p[:, None] + area_t[None, :] - inter + 1e-9)
    tp = 0
    while ious.size and ious.max() >= iou:
        i, j = np.unravel_index(int(ious.argmax()), ious.shape)
        tp += 1
        ious[i, :] = 0
        ious[:, j] = 0
    return tp


def operating_point(records: list[AnnotatedImage], preds: list[sv.Detections], conf: dict[str, float]
                    ) -> dict[str, Any]:
    """Per class precision and recall at the operating thresholds (IoU >= 0.5, one-to-one), and the share
    of images whose WBC count is exact: what a user of the counts meets, unlike AP over all thresholds."""
    out: dict[str, Any] = {}
    for k, c in enumerate(CELL_CLASSES):
        tp = n_pred = n_true = 0
        for r, d in zip(records, preds):
            p = d.xyxy[(d.class_id == k) & (d.confidence >= conf[c])]
            t = r.boxes[np.array([x == c for x in r.classes], bool)] if len(r.classes) else np.zeros((0, 4))
            tp += _match(np.asarray(p, float), np.asarray(t, float))
            n_pred += len(p)
            n_true += len(t)
        out[c] = {"precision": round(tp / n_pred, 4) if n_pred else None,
                  "recall": round(tp / n_true, 4) if n_true else None, "tp": tp, "pred": n_pred, "true": n_true}
    k = CELL_CLASSES.index("WBC")
    exact = [int(np.sum((d.class_id == k) & (d.confidence >= conf["WBC"]))) == sum(x == "WBC" for x in r.classes)
             for r, d in zip(records, preds)]
    out["wbc_exact_share"] = round(float(np.mean(exact)), 4) if exact else None
    return out


def choose_thresholds(records: list[AnnotatedImage], preds: list[sv.Detections]) -> dict[str, float]:
    """Per-class confidence minimising pooled absolute count error (use on validation data only).

    When a range of thresholds ties for the least error (a lab whose WBCs are all sure, such as BCCD val
    with its one WBC per field), the middle of that range is taken, not its low end: the low end (0.17)
    made a BCCD-trained detector over-count the other lab's WBCs by a third (133 for 101, PBC val).
    """
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    best: dict[str, float] = {}
    for k, c in enumerate(CELL_CLASSES):
        true = np.array([sum(x == c for x in r.classes) for r in records], dtype=float)
        scores = [d.confidence[d.class_id == k] for d in preds]
        errs = np.array([sum(abs(float(np.sum(s >= t)) - tv) for s, tv in zip(scores, true)) for t in grid])
        tied = np.flatnonzero(errs == errs.min())
        best[c] = float(grid[tied[len(tied) // 2]])
    return best


def evaluate(
    *,
    detector: Any,
    records: list[AnnotatedImage],
    conf: dict[str, float],
    iou: float,
    max_det: int,
) -> dict[str, Any]:
    """mAP on all records; counting error on all and on the fully-labelled subset."""
    preds = predict_records(detector, records, iou=iou, max_det=max_det)
    result = {"images": len(records), **coco_map(records, preds)}
    complete = [i for i, r in enumerate(records) if r.complete]
    done = [records[i] for i in complete] or records
    result["operating_point"] = operating_point(done, [preds[i] for i in complete] if complete else preds, conf)
    result["operating_point"]["images"] = len(done)
    result["count"] = {
        "thresholds": conf,
        "all_images": {"images": len(records), "per_class": count_errors(records, preds, conf)},
        "complete_labels": {
            "images": len(complete),
            "per_class": count_errors([records[i] for i in complete], [preds[i] for i in complete], conf)
            if complete else None,
        },
    }
    return result
