"""YOLO backend contracts with a toy random-weight model, and the offline guarantees."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from hemocount import CELL_CLASSES
from hemocount.detect import BACKENDS, load_detector
from hemocount.errors import HemocountError, WeightsError

from . import conftest


def test_unknown_backend_lists_valid() -> None:
    with pytest.raises(HemocountError, match="valid: classical, frcnn, yolo"):
        load_detector("nope")
    assert "yolo" in BACKENDS


def test_predict_contract(toy_weights: Path, field: np.ndarray) -> None:
    det = load_detector("yolo", str(toy_weights))
    assert det.classes == CELL_CLASSES
    conf = {c: 0.0001 for c in CELL_CLASSES}
    small = field[:40, :50]
    out = det.predict([field, small], conf=conf, iou=0.6, max_det=50)
    assert len(out) == 2
    for img, d in zip([field, small], out):
        assert len(d) <= 50
        assert set(d.data["class_name"]) <= set(CELL_CLASSES)
        assert [CELL_CLASSES[i] for i in d.class_id] == list(d.data["class_name"])
        if len(d):
            assert d.xyxy[:, [0, 2]].min() >= 0 and d.xyxy[:, [0, 2]].max() <= img.shape[1] + 0.5
            assert d.xyxy[:, [1, 3]].min() >= 0 and d.xyxy[:, [1, 3]].max() <= img.shape[0] + 0.5
    again = det.predict([field], conf=conf, iou=0.6, max_det=50)[0]
    np.testing.assert_array_equal(again.xyxy, out[0].xyxy)  # deterministic
    strict = det.predict([field], conf={"RBC": 1.0, "WBC": 0.0001, "Platelets": 1.0}, iou=0.6, max_det=50)[0]
    assert set(strict.data["class_name"]) <= {"WBC"}
    assert det.predict([], conf=conf, iou=0.6, max_det=5) == []


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(WeightsError, match="bad.pt: cannot load YOLO weights"):
        load_detector("yolo", str(bad))


def test_classes_must_match(toy_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hemocount.weights import sha256_file

    (tmp_path / "t.pt").write_bytes(toy_weights.read_bytes())
    entry = {"id": "t", "task": "detect", "backend": "yolo", "file": "t.pt", "sha256": sha256_file(tmp_path / "t.pt"),
             "classes": ["WBC", "RBC", "Platelets"], "imgsz": 128}
    (tmp_path / "manifest.json").write_text(json.dumps({"weights": [entry]}))
    monkeypatch.setenv("HEMOCOUNT_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match="do not match the manifest"):
        load_detector("yolo", "t")


def test_ultralytics_configured_offline(toy_weights: Path) -> None:
    load_detector("yolo", str(toy_weights))
    from ultralytics.utils import SETTINGS

    from hemocount.detect.ultra_env import config_dir

    assert SETTINGS["sync"] is False
    assert (config_dir() / "Ultralytics" / "Arial.ttf").stat().st_size > 10_000
    import os

    assert os.environ["YOLO_OFFLINE"] == "1"
    assert "ultralytics" in sys.modules


def test_network_guard_is_armed() -> None:
    before = list(conftest.NETWORK_ATTEMPTS)
    with pytest.raises(OSError):
        socket.create_connection(("203.0.113.1", 80), timeout=0.1)
    assert len(conftest.NETWORK_ATTEMPTS) == len(before) + 1
    del conftest.NETWORK_ATTEMPTS[len(before):]  # this attempt was the guard's own self-test
