"""Faster R-CNN backend: checkpoint round trip, predict contract, training + exact resume (toy-sized)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hemocount import CELL_CLASSES
from hemocount.detect import BACKENDS, load_detector
from hemocount.errors import HemocountError, WeightsError

from . import conftest

TOY_MIN_SIZE = 64


def make_toy_frcnn(path: Path, classes: tuple[str, ...] | list[str] = CELL_CLASSES, seed: int = 0) -> Path:
    """Save a random-weight Faster R-CNN checkpoint (min_size 64) the way training saves one."""
    import torch

    from hemocount.detect.frcnn import build_frcnn, model_meta, save_frcnn

    torch.manual_seed(seed)
    meta = model_meta(classes=classes, min_size=TOY_MIN_SIZE)
    save_frcnn(build_frcnn(meta), path, meta, {"recipe": "toy"})
    return path


def toy_frcnn_detector(folder: Path) -> object:
    """Contract-suite factory: a loaded toy ``frcnn`` detector (random weights, no download)."""
    return load_detector("frcnn", str(make_toy_frcnn(folder / "toy-frcnn.pt")))


@pytest.fixture(scope="module")
def toy_frcnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_frcnn(tmp_path_factory.mktemp("frcnn") / "toy-frcnn.pt")


@pytest.fixture(scope="module")
def frcnn_det(toy_frcnn: Path) -> object:
    return load_detector("frcnn", str(toy_frcnn))


def test_registered_and_default_weights(toy_frcnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hemocount.weights import sha256_file

    assert BACKENDS["frcnn"] == "hemocount.detect.frcnn:FrcnnDetector"
    monkeypatch.setenv("HEMOCOUNT_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"weights": []}))
    with pytest.raises(WeightsError, match="no Faster R-CNN weights are shipped"):
        load_detector("frcnn")
    # With a Faster R-CNN entry in the manifest, no --weights means that model (sha256-checked).
    (tmp_path / "f.pt").write_bytes(toy_frcnn.read_bytes())
    entry = {"id": "toy-frcnn", "task": "detect", "backend": "frcnn", "file": "f.pt",
             "sha256": sha256_file(tmp_path / "f.pt"), "classes": list(CELL_CLASSES), "imgsz": TOY_MIN_SIZE}
    (tmp_path / "manifest.json").write_text(json.dumps({"weights": [entry]}))
    assert load_detector("frcnn").weights.id == "toy-frcnn"
    (tmp_path / "f.pt").write_bytes(toy_frcnn.read_bytes()[:-10])
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_detector("frcnn")


def test_build_makes_no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.hub

    from hemocount.detect.frcnn import anchor_sizes, build_frcnn, model_meta

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("download attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    meta = model_meta(classes=CELL_CLASSES, min_size=480)
    model = build_frcnn(meta, max_det=500)
    assert meta["anchors"] == anchor_sizes(480) and meta["max_size"] == 640
    assert model.roi_heads.detections_per_img == 500 and model.transform.min_size == (480,)
    assert model.roi_heads.box_predictor.cls_score.out_features == len(CELL_CLASSES) + 1
    assert any(type(m).__name__ == "GroupNorm" for m in model.backbone.body.modules())
    assert not any("BatchNorm" in type(m).__name__ for m in model.modules())


def test_round_trip_path_and_manifest(toy_frcnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from hemocount.detect.frcnn import load_frcnn
    from hemocount.weights import sha256_file

    det = load_detector("frcnn", str(toy_frcnn))
    assert det.weights.classes == list(CELL_CLASSES) and det.weights.imgsz == TOY_MIN_SIZE
    assert det.meta["recipe"] == "toy" and det.meta["norm"] == "gn"
    saved = torch.load(toy_frcnn, weights_only=True)["model"]
    for k, v in det.model.state_dict().items():
        assert torch.equal(v.half() if v.is_floating_point() else v, saved[k]), k
    assert all(v.dtype != torch.float32 for v in saved.values())  # compact fp16 file

    (tmp_path / "f.pt").write_bytes(toy_frcnn.read_bytes())
    entry = {"id": "toy-frcnn", "task": "detect", "backend": "frcnn", "file": "f.pt",
             "sha256": sha256_file(tmp_path / "f.pt"), "classes": list(CELL_CLASSES), "imgsz": TOY_MIN_SIZE,
             "thresholds": {"conf": 0.3, "iou": 0.5, "max_det": 300}}
    (tmp_path / "manifest.json").write_text(json.dumps({"weights": [entry]}))
    monkeypatch.setenv("HEMOCOUNT_WEIGHTS_DIR", str(tmp_path))
    by_id = load_detector("frcnn", "toy-frcnn")
    assert by_id.weights.id == "toy-frcnn" and by_id.weights.class_conf()["WBC"] == 0.3
    model, meta = load_frcnn(tmp_path / "f.pt")
    assert meta["classes"] == list(CELL_CLASSES) and not model.training
    with pytest.raises(WeightsError, match="backend 'frcnn', not 'yolo'"):
        load_detector("yolo", "toy-frcnn")


def test_predict_contract(frcnn_det: object) -> None:
    det = frcnn_det
    assert det.classes == CELL_CLASSES and det.name == "frcnn"
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, (120, 360, 3), dtype=np.uint8)  # larger than the model input, non-square
    tall = rng.integers(0, 255, (90, 40, 3), dtype=np.uint8)
    conf = {c: 0.0001 for c in CELL_CLASSES}
    out = det.predict([wide, tall], conf=conf, iou=0.5, max_det=40)
    assert len(out) == 2
    for img, d in zip([wide, tall], out):
        h, w = img.shape[:2]
        assert 0 < len(d) <= 40 and d.metadata["raw_count"] == len(d)
        assert [CELL_CLASSES[i] for i in d.class_id] == list(d.data["class_name"])
        assert d.xyxy[:, [0, 2]].min() >= 0 and d.xyxy[:, [0, 2]].max() <= w + 1e-3
        assert d.xyxy[:, [1, 3]].min() >= 0 and d.xyxy[:, [1, 3]].max() <= h + 1e-3
    # Original pixels, not the 64-px model input: the wide image's boxes reach far past x = 120 (its height).
    assert out[0].xyxy[:, 2].max() > 200
    again = det.predict([wide], conf=conf, iou=0.5, max_det=40)[0]  # alone, not padded to the other image
    np.testing.assert_array_equal(again.xyxy, out[0].xyxy)  # deterministic
    np.testing.assert_array_equal(again.confidence, out[0].confidence)
    only_wbc = {"RBC": 1.0, "WBC": 0.0001, "Platelets": 1.0}
    strict = det.predict([wide], conf=only_wbc, iou=0.5, max_det=40)[0]
    assert set(strict.data["class_name"]) == {"WBC"} and strict.metadata["raw_count"] > len(strict)
    assert det.predict([], conf=conf, iou=0.5, max_det=5) == []
    blank = np.full((50, 70, 3), 230, np.uint8)
    none = det.predict([blank], conf={c: 1.0 for c in CELL_CLASSES}, iou=0.5, max_det=5)[0]
    assert len(none) == 0 and none.xyxy.shape == (0, 4) and len(none.data["class_name"]) == 0


def test_wrong_classes_and_bad_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from hemocount.cli import main

    wrong = make_toy_frcnn(tmp_path / "wrong.pt", classes=("RBC", "WBC", "Neutrophil"))
    with pytest.raises(WeightsError, match="model class 'Neutrophil' is not one of RBC, WBC, Platelets"):
        load_detector("frcnn", str(wrong))
    ck = torch.load(wrong, weights_only=True)
    ck["meta"]["classes"] = ["RBC", "WBC"]  # head has 4 outputs, metadata says 3
    torch.save(ck, tmp_path / "misfit.pt")
    with pytest.raises(WeightsError, match="misfit.pt: Faster R-CNN weights do not fit") as err:
        load_detector("frcnn", str(tmp_path / "misfit.pt"))
    assert "\n" not in str(err.value)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="other.pt: not a hemocount Faster R-CNN checkpoint"):
        load_detector("frcnn", str(tmp_path / "other.pt"))
    (tmp_path / "junk.pt").write_bytes(b"\x00junk" * 50)
    with pytest.raises(WeightsError, match="junk.pt: cannot load Faster R-CNN weights"):
        load_detector("frcnn", str(tmp_path / "junk.pt"))
    rc = main(["-q", "count", str(conftest.SAMPLES), "-o", str(tmp_path / "out"), "--detector", "frcnn",
               "--weights", str(wrong), "--no-classify"])
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err_lines) == 1 and "Neutrophil" in err_lines[0]


@pytest.mark.parametrize("flips", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)])
def test_augment_moves_boxes_with_pixels(flips: tuple[int, int, int]) -> None:
    import torch

    from hemocount.detect.train_frcnn import FrcnnRecipe, augment

    recipe = FrcnnRecipe(hflip=flips[0], vflip=flips[1], rot90=flips[2], brightness=0, contrast=0,
                         saturation=0, hue=0)
    img = torch.zeros(3, 40, 60)
    img[:, 5:15, 30:50] = 1.0  # box x 30..50, y 5..15
    out, boxes = augment(img, torch.tensor([[30.0, 5.0, 50.0, 15.0]]), recipe, torch.Generator().manual_seed(0))
    ys, xs = torch.nonzero(out[0] > 0.5, as_tuple=True)
    assert boxes[0].tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    assert out.shape[1:] == ((60, 40) if flips[2] else (40, 60))


def _toy_recipe(**kw: object) -> object:
    from hemocount.detect.train_frcnn import FrcnnRecipe

    base = {"sources": ["bccd", "pbc"], "min_size": TOY_MIN_SIZE, "epochs": 1, "batch": 1, "checkpoint_every": 2,
            "warmup_iters": 1, "box_batch_per_image": 32}
    return FrcnnRecipe(**{**base, **kw})


def test_train_one_epoch_and_exact_resume(fixture_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from hemocount.detect import train_frcnn as tf

    monkeypatch.setenv("HEMOCOUNT_THREADS", "1")  # same thread count in both runs: bit-identical sums
    a = tf.train_frcnn(out=tmp_path / "a", data_root=str(fixture_data), recipe=_toy_recipe())
    assert a == tmp_path / "a" / "best.pt"
    log_a = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert len(log_a) == 1 and log_a[0]["iterations"] == 3 and np.isfinite(log_a[0]["loss"])
    assert log_a[0]["val_mAP50"] is not None and set(log_a[0]["val_AP50"]) == set(CELL_CLASSES)
    rec = json.loads((tmp_path / "a" / "recipe.json").read_text())
    assert rec["recipe"]["min_size"] == TOY_MIN_SIZE and rec["train"] == 3
    best = load_detector("frcnn", str(a))
    assert best.meta["recipe"]["min_size"] == TOY_MIN_SIZE and best.meta["epoch"] == 1

    saves = []
    real_save = tf._save_last

    def save_then_die(path: Path, state: dict) -> None:
        real_save(path, state)
        saves.append(state["state"]["step"])
        raise KeyboardInterrupt  # killed right after the mid-epoch checkpoint

    monkeypatch.setattr(tf, "_save_last", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        tf.train_frcnn(out=tmp_path / "b", data_root=str(fixture_data), recipe=_toy_recipe())
    assert saves == [2] and not (tmp_path / "b" / "log.jsonl").exists()
    monkeypatch.setattr(tf, "_save_last", real_save)
    with pytest.raises(HemocountError, match="run exists"):
        tf.train_frcnn(out=tmp_path / "b", data_root=str(fixture_data), recipe=_toy_recipe())
    tf.train_frcnn(out=tmp_path / "b", data_root=str(fixture_data), resume=True)

    sa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    log_b = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    for key in ("loss", "loss_classifier", "loss_objectness", "val_mAP50", "iterations"):
        assert log_b[0][key] == log_a[0][key], key
    with pytest.raises(HemocountError, match="nothing to resume"):
        tf.train_frcnn(out=tmp_path / "c", data_root=str(fixture_data), resume=True)


def test_cli_train_frcnn_and_start_weights(fixture_data: Path, toy_frcnn: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from hemocount.cli import main

    out = tmp_path / "run"
    rc = main(["-q", "train", "detect", "--backend", "frcnn", "--out", str(out), "--data-root", str(fixture_data),
               "--sources", "bccd", "--imgsz", str(TOY_MIN_SIZE), "--epochs", "1", "--batch", "1",
               "--weights", str(toy_frcnn)])
    assert rc == 0 and capsys.readouterr().out.strip() == str(out / "best.pt")
    rec = json.loads((out / "recipe.json").read_text())
    assert rec["weights"] == str(toy_frcnn) and rec["recipe"]["sources"] == ["bccd"] and rec["recipe"]["batch"] == 1
    rc = main(["-q", "train", "detect", "--backend", "frcnn", "--out", str(tmp_path / "x"), "--data-root",
               str(fixture_data), "--imgsz", str(TOY_MIN_SIZE), "--weights", "ResNet50_Weights.IMAGENET1K_V2"])
    assert rc == 2 and "need --norm frozen_bn" in capsys.readouterr().err
