"""Weights manifest: ids, sha256 checks, and clear errors instead of fallbacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hemocount.errors import WeightsError
from hemocount.weights import list_weights, load_checkpoint, resolve, sha256_file, weights_dir


def _manifest(folder: Path, sha: str) -> None:
    (folder / "m.pt").write_bytes(b"weights-bytes")
    entry = {"id": "toy", "task": "detect", "backend": "yolo", "file": "m.pt", "sha256": sha,
             "classes": ["RBC", "WBC", "Platelets"], "imgsz": 128,
             "thresholds": {"conf": {"RBC": 0.3, "WBC": 0.5, "Platelets": 0.2}, "iou": 0.6, "max_det": 500}}
    (folder / "manifest.json").write_text(json.dumps({"weights": [entry]}))


def test_resolve_checks_sha(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEMOCOUNT_WEIGHTS_DIR", str(tmp_path))
    _manifest(tmp_path, "0" * 64)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        resolve("toy", task="detect")
    _manifest(tmp_path, sha256_file(tmp_path / "m.pt"))
    e = resolve("toy", task="detect")
    assert e.class_conf() == {"RBC": 0.3, "WBC": 0.5, "Platelets": 0.2}
    assert e.class_conf(0.05) == {"RBC": 0.05, "WBC": 0.05, "Platelets": 0.05}


def test_unknown_id_lists_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEMOCOUNT_WEIGHTS_DIR", str(tmp_path))
    _manifest(tmp_path, "0" * 64)
    with pytest.raises(WeightsError, match="valid: toy"):
        resolve("nope", task="detect")
    with pytest.raises(WeightsError, match="backend 'yolo'"):
        resolve("toy", task="detect", backend="frcnn")


def test_missing_file_and_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEMOCOUNT_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match="manifest missing"):
        resolve("toy", task="detect")
    _manifest(tmp_path, "0" * 64)
    (tmp_path / "m.pt").unlink()
    with pytest.raises(WeightsError, match="weights file missing"):
        resolve("toy", task="detect")
    with pytest.raises(WeightsError, match="not found"):
        resolve(str(tmp_path / "other.pt"), task="detect")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(WeightsError, match="cannot read weights manifest"):
        list_weights(tmp_path)


def test_shipped_manifest_is_complete_and_matches_files() -> None:
    entries = list_weights(weights_dir())
    assert entries, "no shipped weights"
    for e in entries:
        assert e.path.is_file(), e.path
        assert sha256_file(e.path) == e.sha256, e.id
        for key in ("training_data", "recipe", "metrics", "licence"):
            assert e.meta.get(key), f"{e.id}: manifest lacks {key}"


@pytest.mark.parametrize("head", [b"\x80\x74", b"\x80\x02", b"PK\x03\x04", b""])
def test_non_checkpoint_bytes_are_one_weights_error(head: bytes, tmp_path: Path) -> None:
    """Bytes that look like a pickle header (protocol 116 made torch warn in CI) never reach torch."""
    import warnings

    path = tmp_path / "bad.pt"
    path.write_bytes(head + bytes(range(256)) * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(WeightsError, match="bad.pt"):
            load_checkpoint(path, "classifier")
