"""One contract every detector backend satisfies (yolo and frcnn toy-sized with random weights, classical as shipped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hemocount import CELL_CLASSES
from hemocount.detect import BACKENDS, load_detector
from hemocount.errors import HemocountError

from .test_detect_frcnn import make_toy_frcnn

LOW = {c: 0.0001 for c in CELL_CLASSES}


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def detector(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> object:
    name = request.param
    if name == "yolo":
        return load_detector("yolo", str(request.getfixturevalue("toy_weights")), engine="torch")
    if name == "frcnn":
        return load_detector("frcnn", str(make_toy_frcnn(tmp_path_factory.mktemp("contract") / "toy-frcnn.pt")))
    if name == "classical":
        return load_detector("classical")
    raise AssertionError(f"backend {name!r} has no contract fixture: add one")


def smear(h: int = 300, w: int = 420) -> np.ndarray:
    """A small synthetic field: pale background, pink RBC discs, one WBC with a violet nucleus, two platelets."""
    import cv2

    img = np.full((h, w, 3), (214, 220, 226), np.uint8)
    for cx, cy in [(60, 60), (170, 55), (60, 200), (360, 240)]:
        cv2.circle(img, (cx, cy), 45, (170, 150, 215), -1)
    cv2.circle(img, (260, 150), 85, (205, 180, 215), -1)
    cv2.circle(img, (260, 150), 42, (200, 90, 140), -1)
    for cx, cy in [(150, 260), (380, 40)]:
        cv2.circle(img, (cx, cy), 10, (190, 100, 150), -1)
    return img


def check(det: object, img: np.ndarray, d: object, conf: dict[str, float], max_det: int) -> None:
    """Boxes in the image's own pixels, names matching ids, thresholds and cap respected."""
    assert len(d) <= max_det
    assert d.xyxy.dtype == np.float32 and d.xyxy.shape == (len(d), 4)
    assert [CELL_CLASSES[i] for i in d.class_id] == list(d.data["class_name"])
    assert "raw_count" in d.metadata
    if len(d):
        h, w = img.shape[:2]
        assert d.xyxy[:, [0, 2]].min() >= -0.5 and d.xyxy[:, [0, 2]].max() <= w + 0.5
        assert d.xyxy[:, [1, 3]].min() >= -0.5 and d.xyxy[:, [1, 3]].max() <= h + 0.5
        assert np.all(d.xyxy[:, 2] >= d.xyxy[:, 0]) and np.all(d.xyxy[:, 3] >= d.xyxy[:, 1])
        thr = np.array([conf[c] for c in d.data["class_name"]])
        assert np.all(d.confidence >= thr)


def test_identity(detector: object) -> None:
    assert detector.name in BACKENDS
    assert detector.classes == CELL_CLASSES
    assert list(detector.weights.classes) == list(CELL_CLASSES)
    assert detector.weights.sha256 and detector.weights.task == "detect"
    assert detector.predict([], conf=LOW, iou=0.5, max_det=10) == []


def test_original_pixel_coordinates(detector: object) -> None:
    # Odd, non-square sizes: a backend that forgets to undo its resize or letterbox leaves the image.
    images = [smear(), smear(301, 517), smear(517, 301)]
    for img, d in zip(images, detector.predict(images, conf=LOW, iou=0.5, max_det=300)):
        check(detector, img, d, LOW, 300)


def test_empty_tiny_and_gray_images(detector: object) -> None:
    import cv2

    blank = np.full((240, 320, 3), 225, np.uint8)
    gray = cv2.cvtColor(cv2.cvtColor(smear(), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    tiny = smear()[:9, :7].copy()
    images = [blank, gray, tiny, np.zeros((1, 1, 3), np.uint8)]
    out = detector.predict(images, conf=LOW, iou=0.5, max_det=50)
    assert len(out) == len(images)
    for img, d in zip(images, out):
        check(detector, img, d, LOW, 50)


def test_deterministic_and_batch_independent(detector: object) -> None:
    a, b = smear(), smear(301, 517)
    alone = detector.predict([a], conf=LOW, iou=0.5, max_det=100)[0]
    batched = detector.predict([b, a], conf=LOW, iou=0.5, max_det=100)[1]
    again = detector.predict([a], conf=LOW, iou=0.5, max_det=100)[0]
    for other in (batched, again):
        np.testing.assert_allclose(other.xyxy, alone.xyxy, atol=1e-3)
        np.testing.assert_allclose(other.confidence, alone.confidence, atol=1e-5)
        assert list(other.class_id) == list(alone.class_id)


def test_conf_and_cap(detector: object) -> None:
    img = smear()
    everything = detector.predict([img], conf=LOW, iou=0.5, max_det=300)[0]
    capped = detector.predict([img], conf=LOW, iou=0.5, max_det=2)[0]
    assert len(capped) <= 2
    conf = {"RBC": 0.5, "WBC": 0.2, "Platelets": 0.9}
    strict = detector.predict([img], conf=conf, iou=0.5, max_det=300)[0]
    check(detector, img, strict, conf, 300)
    assert len(strict) <= len(everything)


def test_unknown_backend_lists_all() -> None:
    with pytest.raises(HemocountError, match="valid: classical, frcnn, yolo"):
        load_detector("nope")


def test_classical_finds_synthetic_cells() -> None:
    from supervision.detection.utils.iou_and_nms import box_iou_batch

    det = load_detector("classical")
    img = smear()
    d = det.predict([img], conf=det.weights.class_conf(), iou=det.weights.thresholds["iou"], max_det=1000)[0]
    truth = {
        "RBC": [(cx - 45, cy - 45, cx + 46, cy + 46) for cx, cy in [(60, 60), (170, 55), (60, 200), (360, 240)]],
        "WBC": [(175, 65, 346, 236)],
        "Platelets": [(140, 250, 161, 271), (370, 30, 391, 51)],
    }
    for cls, boxes in truth.items():
        got = d.xyxy[d.data["class_name"] == cls]
        assert len(got) == len(boxes), (cls, got)
        true = np.asarray(boxes, dtype=np.float32)
        iou = box_iou_batch(true, got)
        match = got[iou.argmax(axis=1)]
        centre_err = np.abs((match[:, :2] + match[:, 2:]) / 2 - (true[:, :2] + true[:, 2:]) / 2).max()
        assert centre_err < 4, (cls, match)
        # Platelet boxes carry a margin learned from BCCD's annotators, large next to a 21-px dot.
        assert np.all(iou.max(axis=1) > (0.25 if cls == "Platelets" else 0.5)), (cls, iou)


def test_classical_parameter_file(tmp_path: Path) -> None:
    import json

    from hemocount.errors import WeightsError

    good = tmp_path / "p.json"
    good.write_text(json.dumps({"params": {"stain_threshold": 60}}))
    det = load_detector("classical", str(good))
    assert det.params.stain_threshold == 60.0 and det.weights.id == "p"
    assert det.weights.sha256 != load_detector("classical").weights.sha256
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stain_treshold": 60}))
    with pytest.raises(WeightsError, match="unknown classical parameter.*stain_treshold"):
        load_detector("classical", str(bad))
    with pytest.raises(WeightsError, match="takes no model weights"):
        load_detector("classical", str(tmp_path / "model.pt"))
    with pytest.raises(HemocountError, match="'classical' has no ONNX path"):
        load_detector("classical", engine="onnx")


def _eval_weights(name: str, request: pytest.FixtureRequest, folder: Path) -> list[str]:
    """``--weights`` for a toy-sized model of backend ``name`` (none: its shipped weights are already small)."""
    if name == "yolo":
        return ["--weights", str(request.getfixturevalue("toy_weights")), "--engine", "torch"]
    if name == "frcnn":
        return ["--weights", str(make_toy_frcnn(folder / "toy-frcnn.pt"))]
    if name == "classical":
        return []
    raise AssertionError(f"backend {name!r} has no eval contract weights: add them")


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_eval_detect_runs_for_every_backend(name: str, request: pytest.FixtureRequest, fixture_data: Path,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`hemocount eval detect --detector NAME` runs to the end and records the engine and precision."""
    import json

    from hemocount.cli import main

    args = ["eval", "detect", "--detector", name, *_eval_weights(name, request, tmp_path),
            "--data-root", str(fixture_data), "--split", "test", "--json"]
    assert main(args) == 0, capsys.readouterr().err
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == 1 and {"mAP50", "mAP50_95", "per_class", "count"} <= set(res)
    assert res["engine"] and res["precision"] == "fp32"
    # The table form (no --json) as well.
    assert main(args[:-1]) == 0
    assert "mAP50" in capsys.readouterr().out
