"""ONNX export and the ONNX Runtime engine: same results as torch, a cache that is reused and repaired."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hemocount import CELL_CLASSES
from hemocount.cli import main
from hemocount.errors import HemocountError
from hemocount.weights import sha256_file

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
#: Tolerances between engines: boxes in pixels, detector confidences, classifier probabilities.
BOX_PX, CONF_TOL, PROB_TOL = 1.0, 1e-3, 1e-4


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ONNX cache of this test's own."""
    monkeypatch.setenv("HEMOCOUNT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tl, br = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], axis=1), np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _assert_same_detections(ref: Any, other: Any) -> None:  # sv.Detections
    from scipy.optimize import linear_sum_assignment

    assert len(ref) == len(other) > 0
    # One-to-one matching by IoU, then class and confidence (the toy model repeats boxes across classes).
    cost = (1 - _iou(ref.xyxy, other.xyxy)) + 10.0 * (ref.class_id[:, None] != other.class_id[None, :]) \
        + np.abs(ref.confidence[:, None] - other.confidence[None, :])
    rows, cols = linear_sum_assignment(cost)
    m = other[cols[np.argsort(rows)]]
    assert np.abs(ref.xyxy - m.xyxy).max() <= BOX_PX
    assert np.array_equal(ref.class_id, m.class_id)
    assert np.abs(ref.confidence - m.confidence).max() <= CONF_TOL


def test_export_cli_writes_onnx_and_record(toy_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    target = tmp_path / "det.onnx"
    assert main(["-q", "export", "--weights", str(toy_weights), "--format", "onnx", "-o", str(target)]) == 0
    assert str(target) in capsys.readouterr().out
    onnx.checker.check_model(str(target))
    rec = json.loads((tmp_path / "det.onnx.json").read_text())
    assert rec["task"] == "detect" and rec["source"]["sha256"] == sha256_file(toy_weights)
    assert rec["onnx_sha256"] == sha256_file(target) and rec["classes"] == list(CELL_CLASSES)
    assert rec["input_size"] == 128 and rec["opset"] >= 11 and "letterbox" in rec["normalisation"].lower()
    assert not list(tmp_path.glob(".export-*"))  # temporary export folder cleaned up


def test_export_cli_classifier_into_folder(toy_classifiers: dict[str, Path], tmp_path: Path) -> None:
    assert main(["-q", "export", "--weights", str(toy_classifiers["all"]), "-o", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "toy-all.onnx.json").read_text())
    from hemocount.classify.data import TASKS

    assert rec["task"] == "all" and rec["classes"] == list(TASKS["all"]) == rec["meta"]["classes"]
    assert rec["input_size"] == 32 and rec["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    assert (tmp_path / "toy-all.onnx").stat().st_size > 1000


def test_export_bad_weights_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 50)
    assert main(["export", "--weights", str(bad), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.pt: cannot load YOLO weights" in err and "Traceback" not in err


def test_detector_onnx_matches_torch(toy_weights: Path, field: np.ndarray) -> None:
    import cv2

    from hemocount.detect import load_detector

    torch_det = load_detector("yolo", str(toy_weights), engine="torch")
    onnx_det = load_detector("yolo", str(toy_weights), engine="onnx")
    assert (torch_det.engine, onnx_det.engine) == ("torch", "onnx")
    sample = cv2.imread(str(min(SAMPLES.glob("*.jpg"))))
    conf = {c: 0.05 for c in CELL_CLASSES}
    # same-size batch (rectangular letterbox), then mixed sizes (square letterbox)
    for batch in ([sample, sample[:, ::-1].copy()], [field, sample]):
        ref = torch_det.predict(batch, conf=conf, iou=0.6, max_det=300)
        got = onnx_det.predict(batch, conf=conf, iou=0.6, max_det=300)
        for r, g in zip(ref, got):
            _assert_same_detections(r, g)
            assert g.metadata["raw_count"] == r.metadata["raw_count"]
            assert list(g.data["class_name"]) == [CELL_CLASSES[i] for i in g.class_id]


def test_classifier_onnx_matches_torch(toy_classifiers: dict[str, Path]) -> None:
    from hemocount.classify.infer import Classifier

    crops = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    for task, path in toy_classifiers.items():
        ref = Classifier.from_weights(str(path), task=task, engine="torch")
        got = Classifier.from_weights(str(path), task=task, engine="onnx")
        assert got.engine == "onnx" and got.classes == ref.classes and got.size == ref.size == 32
        for n in (1, 5):  # the batch axis is dynamic
            a, b = ref.predict_crops(crops[:n]), got.predict_crops(crops[:n])
            assert a.shape == b.shape == (n, len(ref.classes))
            assert np.abs(a - b).max() <= PROB_TOL
        assert got.predict_crops(crops[:0]).shape == (0, len(ref.classes))


def test_cache_is_reused(toy_classifiers: dict[str, Path], cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hemocount import onnx_cache
    from hemocount.classify.infer import Classifier

    path = toy_classifiers["wbc_subtype"]
    Classifier.from_weights(str(path), task="wbc_subtype", engine="onnx")
    cached = cache / f"{sha256_file(path)}.onnx"
    assert cached.exists() and (cache / f"{cached.name}.json").exists()
    stamp = cached.stat().st_mtime_ns

    def no_export(*_a: object, **_k: object) -> None:
        raise AssertionError("exported again although the cache holds a valid export")

    monkeypatch.setattr(onnx_cache, "write_export", no_export)
    Classifier.from_weights(str(path), task="wbc_subtype", engine="onnx")
    assert cached.stat().st_mtime_ns == stamp


def test_corrupt_cache_is_reexported(toy_weights: Path, cache: Path, field: np.ndarray,
                                     caplog: pytest.LogCaptureFixture) -> None:
    from hemocount.detect import load_detector

    load_detector("yolo", str(toy_weights), engine="onnx")
    cached = cache / f"{sha256_file(toy_weights)}.onnx"
    cached.write_bytes(cached.read_bytes()[:5000])  # truncated
    with caplog.at_level(logging.WARNING, logger="hemocount"):
        det = load_detector("yolo", str(toy_weights), engine="onnx")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "corrupt" in warnings[0] and str(cached) in warnings[0]
    assert len(det.predict([field], conf={c: 0.05 for c in CELL_CLASSES}, iou=0.6, max_det=50)) == 1
    assert sha256_file(cached) == json.loads((cache / f"{cached.name}.json").read_text())["onnx_sha256"]


def test_unwritable_cache_is_one_clear_error(toy_classifiers: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from hemocount.classify.infer import Classifier

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("HEMOCOUNT_CACHE", str(blocker))
    with pytest.raises(HemocountError, match="cannot write the ONNX cache.*HEMOCOUNT_CACHE"):
        Classifier.from_weights(str(toy_classifiers["all"]), task="all", engine="onnx")


def test_unknown_engine() -> None:
    from hemocount.engine import resolve_engine

    with pytest.raises(HemocountError, match="valid: auto, torch, onnx, openvino"):
        resolve_engine("tensorrt", "detect")
    assert resolve_engine("auto", "detect") in ("torch", "onnx", "openvino")


def test_count_records_engine(toy_weights: Path, toy_classifiers: dict[str, Path], tmp_path: Path) -> None:
    runs = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / engine
        assert main(["-q", "count", str(SAMPLES), "-o", str(out), "--weights", str(toy_weights), "--conf", "0.05",
                     "--max-det", "100", "--no-annotate", "--engine", engine,
                     "--subtype-weights", str(toy_classifiers["wbc_subtype"]),
                     "--all-weights", str(toy_classifiers["all"])]) == 0
        runs[engine] = json.loads((out / "run.json").read_text())
        assert runs[engine]["engine"] == {"requested": engine, "detector": engine, "classifiers": engine,
                                          "precision_requested": "auto", "detector_precision": "fp32",
                                          "classifiers_precision": "fp32"}
    # same counts and differential from either engine
    assert runs["torch"]["summary"]["totals"] == runs["onnx"]["summary"]["totals"]
    assert runs["torch"]["classifiers"]["subtype"]["counts"] == runs["onnx"]["classifiers"]["subtype"]["counts"]


def test_cached_classifier_export_is_not_a_detector(toy_classifiers: dict[str, Path], cache: Path) -> None:
    """The cache is keyed by file hash: a classifier's export must not be taken for a detector's."""
    from hemocount.classify.infer import Classifier
    from hemocount.detect import load_detector
    from hemocount.errors import WeightsError

    path = toy_classifiers["all"]
    Classifier.from_weights(str(path), task="all", engine="onnx")
    assert (cache / f"{sha256_file(path)}.onnx").exists()
    for engine in ("onnx", "openvino"):
        with pytest.raises(WeightsError, match="cannot load YOLO weights"):
            load_detector("yolo", str(path), engine=engine)


def test_instance_input_norm_survives_save_load_and_onnx(tmp_path: Path, cache: Path) -> None:
    """``--input-norm instance`` lives in the model: the saved checkpoint rebuilds it, ONNX Runtime computes it,
    and a per-channel gain/offset of a crop (a lab's stain or camera) barely moves the probabilities."""
    import torch

    from hemocount.classify.data import TASKS
    from hemocount.classify.infer import Classifier
    from hemocount.classify.model import build_resnet
    from hemocount.classify.train import ClassifyRecipe, save_classifier

    torch.manual_seed(0)
    classes = TASKS["wbc_subtype"]
    recipe = ClassifyRecipe(arch="resnet18", size=32, input_norm="instance")
    path = tmp_path / "inorm.pt"
    save_classifier(build_resnet(len(classes), arch="resnet18", input_norm="instance"), path, recipe, classes, {})
    assert torch.load(path, weights_only=True)["meta"]["input_norm"] == "instance"
    crops = np.random.default_rng(1).integers(40, 200, (4, 32, 32, 3), dtype=np.uint8)
    shifted = np.clip(crops * np.array([0.8, 1.1, 0.9]) + np.array([20, -10, 5]), 0, 255).astype(np.uint8)
    ref = Classifier.from_weights(str(path), task="wbc_subtype", engine="torch")
    got = Classifier.from_weights(str(path), task="wbc_subtype", engine="onnx")
    a = ref.predict_crops(crops)
    assert np.abs(a - got.predict_crops(crops)).max() <= PROB_TOL
    # 0.0007 measured; the same toy without instance norm moves by 0.027
    assert np.abs(a - ref.predict_crops(shifted)).max() <= 0.005
    plain = tmp_path / "plain.pt"
    save_classifier(build_resnet(len(classes), arch="resnet18"), plain, ClassifyRecipe(arch="resnet18", size=32),
                    classes, {})
    assert "input_norm" not in torch.load(plain, weights_only=True)["meta"]  # shipped metadata unchanged


def test_start_weights_with_another_input_norm_are_refused(tmp_path: Path) -> None:
    """Fine-tuning from an instance-norm start without it would leave conv1 random (copy_fitting skips
    misfits): one clear error."""
    import torch

    from hemocount.classify.model import build_resnet

    path = tmp_path / "inorm.pt"
    torch.save({"model": build_resnet(5, arch="resnet18", input_norm="instance").state_dict()}, path)
    with pytest.raises(HemocountError, match="trained with input_norm 'instance'"):
        build_resnet(5, arch="resnet18", weights=str(path))
    assert build_resnet(5, arch="resnet18", weights=str(path), input_norm="instance") is not None


def test_an_imagenet_norm_start_keeps_its_conv1_under_instance_norm(tmp_path: Path) -> None:
    """A start trained without the input standardisation keeps its first convolution when fine-tuned with it
    (the weights move to conv1.1), instead of a silently random conv1."""
    import torch

    from hemocount.classify.model import build_resnet

    start = build_resnet(5, arch="resnet18")
    path = tmp_path / "plain.pt"
    torch.save({"model": start.state_dict()}, path)
    tuned = build_resnet(5, arch="resnet18", weights=str(path), input_norm="instance")
    assert torch.equal(tuned.conv1[1].weight, start.conv1.weight)
    assert torch.equal(tuned.layer1[0].conv1.weight, start.layer1[0].conv1.weight)
