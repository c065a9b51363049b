"""The OpenVINO engine: same results as torch (fp32: tight; bf16: within stated tolerances), shapes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hemocount import CELL_CLASSES
from hemocount.cli import main
from hemocount.errors import HemocountError
from tests.test_onnx import SAMPLES, _assert_same_detections, _iou

pytest.importorskip("openvino")


def _has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


needs_bf16 = pytest.mark.skipif(not _has_bf16(), reason="this CPU has no native bfloat16")
#: bf16 has an 8-bit mantissa: probabilities of the toy classifiers within this of fp32 torch.
BF16_PROB_TOL = 0.03


def test_detector_openvino_fp32_matches_torch(toy_weights: Path, field: np.ndarray) -> None:
    import cv2

    from hemocount.detect import load_detector

    ref_det = load_detector("yolo", str(toy_weights), engine="torch")
    ov_det = load_detector("yolo", str(toy_weights), engine="openvino", precision="fp32")
    assert (ov_det.engine, ov_det.precision) == ("openvino", "fp32")
    sample = cv2.imread(str(min(SAMPLES.glob("*.jpg"))))
    conf = {c: 0.05 for c in CELL_CLASSES}
    # same-size batch of 3 (padded to a compiled batch of 4), then mixed sizes (one image each)
    for batch in ([sample, sample[:, ::-1].copy(), sample[::-1].copy()], [field, sample]):
        ref = ref_det.predict(batch, conf=conf, iou=0.6, max_det=300)
        got = ov_det.predict(batch, conf=conf, iou=0.6, max_det=300)
        assert len(got) == len(batch)
        for r, g in zip(ref, got):
            _assert_same_detections(r, g)
            assert g.metadata["raw_count"] == r.metadata["raw_count"]


@needs_bf16
def test_detector_openvino_bf16_close_to_torch(toy_weights: Path) -> None:
    """bf16 moves boxes by a fraction of a pixel and scores by ~1e-2: most boxes must match 1:1."""
    import cv2

    from hemocount.detect import load_detector

    ref_det = load_detector("yolo", str(toy_weights), engine="torch")
    ov_det = load_detector("yolo", str(toy_weights), engine="openvino", precision="bf16")
    assert ov_det.precision == "bf16"
    sample = cv2.imread(str(min(SAMPLES.glob("*.jpg"))))
    conf = {c: 0.05 for c in CELL_CLASSES}
    ref = ref_det.predict([sample], conf=conf, iou=0.6, max_det=300)[0]
    got = ov_det.predict([sample], conf=conf, iou=0.6, max_det=300)[0]
    assert len(ref) > 10 and abs(len(got) - len(ref)) <= 0.1 * len(ref)
    same_class = ref.class_id[:, None] == got.class_id[None, :]
    best = np.where(same_class, _iou(ref.xyxy, got.xyxy), 0).max(axis=1)
    assert np.mean(best >= 0.9) >= 0.9, np.sort(best)[:10]


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16)])
def test_classifier_openvino_matches_torch(toy_classifiers: dict[str, Path], precision: str) -> None:
    from hemocount.classify.infer import Classifier

    crops = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    tol = 1e-4 if precision == "fp32" else BF16_PROB_TOL
    for task, path in toy_classifiers.items():
        ref = Classifier.from_weights(str(path), task=task, engine="torch")
        got = Classifier.from_weights(str(path), task=task, engine="openvino", precision=precision)
        assert (got.engine, got.precision) == ("openvino", precision) and got.classes == ref.classes
        # 1 and 5 run as compiled batches of 1 and 8; 40 as 32 + 8
        for n in (1, 5, 40):
            a, b = ref.predict_crops(crops[:n]), got.predict_crops(crops[:n])
            assert a.shape == b.shape == (n, len(ref.classes))
            assert np.abs(a - b).max() <= tol
        # a crop's probabilities do not depend on its batch-mates (padding, chunking)
        assert np.abs(got.predict_crops(crops[:1]) - got.predict_crops(crops[:5])[:1]).max() <= tol
        assert got.predict_crops(crops[:0]).shape == (0, len(ref.classes))


def test_runner_compiles_few_shapes(toy_classifiers: dict[str, Path]) -> None:
    from hemocount.classify.infer import Classifier

    clf = Classifier.from_weights(str(toy_classifiers["all"]), task="all", engine="openvino", precision="fp32")
    crops = np.random.default_rng(0).integers(0, 256, (33, 32, 32, 3), dtype=np.uint8)
    for n in (3, 4, 5, 6, 7, 8, 33):
        clf.predict_crops(crops[:n])
    # Buckets of CROP_BATCHES; the single crop left of 33 ran padded in the compiled 8, not compiled as 1.
    assert sorted(s[0] for s in clf.model._requests) == [8, 32]
    single = clf.predict_crops(crops[:1])
    for _ in range(9):  # 7 padded crops a call: the 10th call passes PAD_BUDGET (64) and compiles size 1
        clf.predict_crops(crops[:1])
    assert sorted(s[0] for s in clf.model._requests) == [1, 8, 32]
    assert np.abs(clf.predict_crops(crops[:1]) - single).max() < 1e-5


def test_compiled_models_are_cached_on_disk(toy_classifiers: dict[str, Path], toy_weights: Path,
                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hemocount.classify.infer import Classifier
    from hemocount.detect import load_detector
    from hemocount.engine import COMPILED_CACHE_ENV, compiled_cache_dir

    monkeypatch.setenv("HEMOCOUNT_CACHE", str(tmp_path))  # empty: other tests compiled the same shapes
    folder = compiled_cache_dir()
    assert folder == tmp_path / "openvino"
    crops = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    clf = Classifier.from_weights(str(toy_classifiers["all"]), task="all", engine="openvino", precision="fp32")
    first = clf.predict_crops(crops)
    cached = sorted(p.name for p in folder.iterdir())
    assert [n for n in cached if n.endswith(".xml")] == [n for n in cached if n.endswith("-8x3x32x32.xml")] != []
    assert any(n.endswith(".blob") for n in cached) and clf.model.model is None  # no ov.Model kept beside it
    again = Classifier.from_weights(str(toy_classifiers["all"]), task="all", engine="openvino", precision="fp32")
    assert np.array_equal(again.predict_crops(crops), first) and sorted(p.name for p in folder.iterdir()) == cached
    for f in folder.glob("*.bin"):  # a damaged entry is dropped and rebuilt, not an error
        f.write_bytes(b"garbage")
    for f in folder.glob("*.blob"):
        f.unlink()
    damaged = Classifier.from_weights(str(toy_classifiers["all"]), task="all", engine="openvino", precision="fp32")
    assert np.abs(damaged.predict_crops(crops) - first).max() < 1e-6
    det = load_detector("yolo", str(toy_weights), engine="openvino")
    # The detector has no GroupNorm: it compiles without OpenVINO's snippets, the classifiers with them.
    assert det.model.runner.config["SNIPPETS_MODE"] == "DISABLE" and "SNIPPETS_MODE" not in clf.model.config
    monkeypatch.setenv(COMPILED_CACHE_ENV, "0")
    assert compiled_cache_dir() is None
    clf = Classifier.from_weights(str(toy_classifiers["all"]), task="all", engine="openvino", precision="fp32")
    assert clf.model.cache is None and np.abs(clf.predict_crops(crops) - first).max() < 1e-6


def test_precision_errors(toy_classifiers: dict[str, Path]) -> None:
    from hemocount.classify.infer import Classifier
    from hemocount.detect import load_detector

    with pytest.raises(HemocountError, match="bf16 needs --engine openvino"):
        Classifier.from_weights(str(toy_classifiers["all"]), task="all", engine="onnx", precision="bf16")
    with pytest.raises(HemocountError, match="unknown precision 'fp8'; valid: auto, fp32, bf16"):
        Classifier.from_weights(str(toy_classifiers["all"]), task="all", engine="openvino", precision="fp8")
    with pytest.raises(HemocountError, match="'classical' has no ONNX path; --engine openvino"):
        load_detector("classical", engine="openvino")
    with pytest.raises(HemocountError, match="'classical' computes in fp32 only"):
        load_detector("classical", engine="auto", precision="bf16")


def test_auto_prefers_openvino_then_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    from hemocount import engine

    assert engine.resolve_engine("auto", "classify") == "openvino"
    monkeypatch.setattr(engine, "_installed", lambda name: name == "onnx")
    assert engine.resolve_engine("auto", "detect") == "onnx"
    monkeypatch.setattr(engine, "_installed", lambda name: name == "torch")
    assert engine.resolve_engine("auto", "detect") == "torch"
    monkeypatch.setattr(engine, "_installed", lambda name: False)  # never torch in their place when it is absent
    with pytest.raises(HemocountError, match="no inference engine installed.*pip install"):
        engine.resolve_engine("auto", "detect")


def test_count_openvino_records_precision(toy_weights: Path, toy_classifiers: dict[str, Path],
                                          tmp_path: Path) -> None:
    runs = {}
    for engine, precision in (("torch", "auto"), ("openvino", "fp32")):
        out = tmp_path / engine
        assert main(["-q", "count", str(SAMPLES), "-o", str(out), "--weights", str(toy_weights), "--conf", "0.05",
                     "--max-det", "100", "--no-annotate", "--engine", engine, "--precision", precision,
                     "--subtype-weights", str(toy_classifiers["wbc_subtype"]),
                     "--all-weights", str(toy_classifiers["all"])]) == 0
        runs[engine] = json.loads((out / "run.json").read_text())
    assert runs["openvino"]["engine"] == {
        "requested": "openvino", "detector": "openvino", "classifiers": "openvino", "precision_requested": "fp32",
        "detector_precision": "fp32", "classifiers_precision": "fp32"}
    assert runs["torch"]["engine"]["detector_precision"] == "fp32"
    assert runs["torch"]["summary"]["totals"] == runs["openvino"]["summary"]["totals"]
    assert runs["torch"]["classifiers"]["subtype"]["counts"] == runs["openvino"]["classifiers"]["subtype"]["counts"]


def test_ultralytics_nms_gets_torchvision() -> None:
    """ultralytics picks torchvision's NMS kernel only if torchvision is imported; else a slow Python loop."""
    import subprocess
    import sys

    code = ("import sys; from hemocount.detect.ultra_env import ultralytics; ultralytics(); "
            "print('torchvision' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert res.stdout.strip() == "True"
