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


def _named_files(obj: object) -> set[str]:
    """Every file name a manifest entry mentions (its checkpoint, exports, references)."""
    if isinstance(obj, dict):
        return set().union(*(_named_files(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_named_files(v) for v in obj)) if obj else set()
    if isinstance(obj, str) and "/" not in obj and obj.endswith((".pt", ".onnx", ".npz", ".bin", ".xml")):
        return {obj}
    return set()


#: What weights/ may hold in all (271 MB at v3 of the classifiers): one compact copy of each model per form.
#: A second copy of a ResNet-50 (47 MB) breaks it; every retrain adds its files to the git history again and
#: a submission's diff is capped at 256 MiB, so old versions live in git, never beside the new ones.
WEIGHTS_BUDGET_MB = 300


def test_weights_folder_holds_one_copy_of_each_model_and_nothing_else() -> None:
    import json

    folder = weights_dir()
    manifest = json.loads((folder / "manifest.json").read_text())
    named = _named_files(manifest["weights"])
    present = {p.name for p in folder.iterdir() if p.is_file()} - {"manifest.json"}
    assert present == named, f"not in the manifest: {sorted(present - named)}; missing: {sorted(named - present)}"
    for e in manifest["weights"]:
        forms = [n for n in _named_files(e) if n.endswith((".pt", ".onnx"))]
        assert len(forms) == len({n.rsplit(".", 1)[1] for n in forms}), f"{e['id']}: two files of one form: {forms}"
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    assert total < WEIGHTS_BUDGET_MB, f"weights/ holds {total:.0f} MB (budget {WEIGHTS_BUDGET_MB})"
    big = [p.name for p in (folder / "eval").iterdir() if p.stat().st_size > 1_000_000]
    assert not big, f"eval records over 1 MB: {big}"
