"""COCO mAP and counting metrics against hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import supervision as sv

from hemocount.datasets.records import AnnotatedImage
from hemocount.detect.evaluate import choose_thresholds, coco_map, count_errors


def _rec(boxes: list[list[float]], classes: list[str]) -> AnnotatedImage:
    return AnnotatedImage("x", Path("x.jpg"), 200, 200, np.array(boxes, float).reshape(-1, 4), classes,
                          "t", "test", "t", complete=True)


def _det(boxes: list[list[float]], ids: list[int], conf: list[float]) -> sv.Detections:
    return sv.Detections(xyxy=np.array(boxes, np.float32).reshape(-1, 4), confidence=np.array(conf, np.float32),
                         class_id=np.array(ids, int))


def test_perfect_predictions_give_map_one() -> None:
    rec = _rec([[10, 10, 40, 40], [50, 50, 120, 120], [150, 150, 160, 160]], ["RBC", "WBC", "Platelets"])
    pred = _det(rec.boxes.tolist(), [0, 1, 2], [0.9, 0.8, 0.7])
    res = coco_map([rec], [pred])
    assert res["mAP50"] == 1.0 and res["mAP50_95"] == 1.0
    assert res["per_class"]["WBC"]["AP50"] == 1.0


def test_missed_class_lowers_map() -> None:
    rec = _rec([[10, 10, 40, 40], [50, 50, 120, 120]], ["RBC", "WBC"])
    pred = _det([[10, 10, 40, 40]], [0], [0.9])
    res = coco_map([rec], [pred])
    assert res["per_class"]["RBC"]["AP50"] == 1.0 and res["per_class"]["WBC"]["AP50"] == 0.0
    assert abs(res["mAP50"] - 0.5) < 1e-6  # platelets absent from GT: excluded from the mean


def test_count_errors_hand_computed() -> None:
    recs = [_rec([[0, 0, 5, 5]] * 10, ["RBC"] * 10), _rec([[0, 0, 5, 5]] * 4, ["RBC"] * 4)]
    preds = [_det([[0, 0, 5, 5]] * 8, [0] * 8, [0.9] * 6 + [0.1] * 2), _det([[0, 0, 5, 5]] * 5, [0] * 5, [0.9] * 5)]
    res = count_errors(recs, preds, {"RBC": 0.5, "WBC": 0.5, "Platelets": 0.5})["RBC"]
    # predicted 6 and 5 for 10 and 4: errors 4 and 1
    assert res["mae"] == 2.5 and res["accuracy"] == round(1 - 5 / 14, 4)
    assert res["mape"] == round((0.4 + 0.25) / 2, 4) and res["pred_total"] == 11


def test_choose_thresholds_minimises_count_error() -> None:
    recs = [_rec([[0, 0, 5, 5]] * 3, ["RBC"] * 3)]
    preds = [_det([[0, 0, 5, 5]] * 5, [0] * 5, [0.9, 0.8, 0.7, 0.3, 0.2])]
    thr = choose_thresholds(recs, preds)
    assert 0.3 < thr["RBC"] <= 0.7


def test_choose_thresholds_takes_the_middle_of_a_tie() -> None:
    """One sure WBC per field counts exactly from 0.21 to 0.9: the middle, not the low end, is chosen."""
    recs = [_rec([[0, 0, 5, 5]], ["WBC"])] * 2
    preds = [_det([[0, 0, 5, 5], [5, 5, 9, 9]], [1, 1], [0.95, 0.2])] * 2
    assert 0.5 <= choose_thresholds(recs, preds)["WBC"] <= 0.6
