"""Lab-robust training augmentation of the detector: stain jitter, zoom-in with its boxes, the hook."""

from __future__ import annotations

import numpy as np
import pytest

from hemocount.detect.augment import RobustAug, RobustAugConfig, stain_jitter_bgr, zoom_in


def test_stain_jitter_is_identity_at_zero_and_changes_colour_otherwise() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(30, 250, (40, 50, 3), dtype=np.uint8)
    assert np.abs(stain_jitter_bgr(img, 0.0, rng).astype(int) - img).max() <= 1
    out = stain_jitter_bgr(img, 0.3, np.random.default_rng(1))
    assert out.shape == img.shape and out.dtype == np.uint8 and np.abs(out.astype(int) - img).mean() > 3


def test_zoom_in_maps_boxes_and_drops_mostly_hidden_ones() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[40:60, 90:110] = 255
    boxes = np.array([[90, 40, 110, 60], [0, 0, 10, 10]], float)

    class Centre:  # a generator whose uniform() returns the window that centres the zoom
        def uniform(self, lo: float, hi: float) -> float:
            return (lo + hi) / 2

    out, kept, idx = zoom_in(img, boxes, 2.0, Centre())  # type: ignore[arg-type]
    assert out.shape == img.shape and list(idx) == [0]
    np.testing.assert_allclose(kept[0], [80, 30, 120, 70])
    assert out[50, 100].min() == 255 and out[5, 5].max() == 0


def test_robust_aug_keeps_labels_consistent() -> None:
    from hemocount.detect.ultra_env import ultralytics

    ultralytics()  # offline configuration before any ultralytics import
    from ultralytics.utils.instance import Instances

    rng = np.random.default_rng(0)
    np.random.seed(0)
    cfg = RobustAugConfig(stain_p=1, blur_p=1, noise_p=1, jpeg_p=1, zoom_p=1, zoom_max=2.0)
    aug = RobustAug(cfg)
    for _ in range(5):
        boxes = np.array([[10, 10, 60, 60], [100, 100, 150, 160], [300, 20, 380, 90]], np.float32)
        labels = {"img": rng.integers(0, 255, (416, 416, 3), dtype=np.uint8), "cls": np.array([[0], [1], [2]]),
                  "instances": Instances(boxes, np.zeros((0, 1000, 2), np.float32), bbox_format="xyxy",
                                         normalized=False)}
        out = aug(labels)
        assert out["img"].shape == (416, 416, 3) and out["img"].dtype == np.uint8
        assert len(out["cls"]) == len(out["instances"]) <= 3
        b = out["instances"].bboxes
        assert (b >= 0).all() and (b[:, 2] <= 416).all() and (b[:, 3] <= 416).all()


def test_operating_point_precision_recall_and_exact_wbc() -> None:
    from pathlib import Path

    import supervision as sv

    from hemocount.datasets.records import AnnotatedImage
    from hemocount.detect.evaluate import operating_point

    rec = AnnotatedImage("a", Path("a.jpg"), 100, 100, np.array([[0, 0, 10, 10], [50, 50, 70, 70], [20, 20, 24, 24]],
                                                                 float), ["RBC", "WBC", "Platelets"], "x", "test",
                         "t", True)
    pred = sv.Detections(xyxy=np.array([[0, 0, 10, 11], [80, 80, 84, 84], [21, 20, 25, 24], [50, 50, 70, 70]], float),
                         confidence=np.array([0.9, 0.8, 0.3, 0.7]), class_id=np.array([0, 2, 2, 1]))
    op = operating_point([rec], [pred], {"RBC": 0.5, "WBC": 0.5, "Platelets": 0.5})
    assert op["RBC"]["precision"] == 1.0 and op["RBC"]["recall"] == 1.0
    assert op["Platelets"]["precision"] == 0.0 and op["Platelets"]["recall"] == 0.0  # debris kept, platelet lost
    assert op["wbc_exact_share"] == 1.0
    op = operating_point([rec], [pred], {"RBC": 0.5, "WBC": 0.5, "Platelets": 0.2})
    assert op["Platelets"]["precision"] == 0.5 and op["Platelets"]["recall"] == 1.0


@pytest.mark.slow
def test_robust_training_applies_the_augmentation(tmp_path, fixture_data, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """One tiny epoch with --robust-aug: ultralytics' training set runs RobustAug on every image."""
    from hemocount.detect import augment
    from hemocount.detect.train_yolo import DetectRecipe, train_detector

    calls: list[int] = []
    real = augment.RobustAug.__call__

    def counted(self, labels):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(self, labels)

    monkeypatch.setattr(augment.RobustAug, "__call__", counted)
    recipe = DetectRecipe(sources=["bccd"], epochs=1, imgsz=96, batch=2, robust=augment.RobustAugConfig().to_json())
    best = train_detector(out=tmp_path / "run", data_root=str(fixture_data), recipe=recipe)
    assert best.is_file() and len(calls) > 0
