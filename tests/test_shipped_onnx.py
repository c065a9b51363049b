"""The ONNX files shipped in weights/: the engines run them (never exporting at run time), a missing, corrupt or
stale one is an error naming it, fp16 storage computes as the fp32 export does, and a lean install (no torch,
ultralytics or onnx) counts with them and answers anything that needs the training stack in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hemocount.errors import HemocountError, WeightsError
from hemocount.weights import list_weights, sha256_file, weights_dir

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SHIPPED = {"yolo11n-cells": "detect", "resnet50-all": "all", "resnet50-wbc-subtype": "wbc_subtype"}


@pytest.fixture
def no_export(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fresh cache, and an exporter that fails the test if called."""
    from hemocount import onnx_cache

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("exported at run time although weights/ ships the ONNX file")

    monkeypatch.setattr(onnx_cache, "write_export", refuse)
    monkeypatch.setenv("HEMOCOUNT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_manifest_ships_an_onnx_file_per_counting_model() -> None:
    entries = {e.id: e for e in list_weights()}
    for wid in SHIPPED:
        block = entries[wid].meta["onnx"]
        path = weights_dir() / block["file"]
        assert block["exported_from"] == {"file": entries[wid].file, "sha256": entries[wid].sha256}, wid
        assert path.stat().st_size == block["bytes"] and sha256_file(path) == block["sha256"], wid
        assert block["precision"].startswith("fp16 weights")
        # fp16 storage: about half of the fp32 parameters' bytes (the .pt is fp16 too)
        assert block["bytes"] < 1.05 * entries[wid].path.stat().st_size, wid
    assert "onnx" not in entries["frcnn-r50-cells"].meta  # torch only (README)


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_engines_run_the_shipped_files(engine: str, no_export: Path) -> None:
    from hemocount.classify.infer import Classifier
    from hemocount.detect import load_detector

    det = load_detector("yolo", engine=engine)
    assert det.model.runner.path == weights_dir() / "yolo11n-cells.onnx"
    for wid, task in list(SHIPPED.items())[1:]:
        clf = Classifier.from_weights(wid, task=task, engine=engine)
        assert clf.engine == engine and clf.classes
    assert not (no_export / "onnx").exists()  # nothing exported, nothing cached


def _weights_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """weights/ with only the manifest and the detector's ONNX file (no .pt, as in a wheel)."""
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(weights_dir() / "manifest.json", folder)
    shutil.copy(weights_dir() / "yolo11n-cells.onnx", folder)
    monkeypatch.setenv("HEMOCOUNT_WEIGHTS_DIR", str(folder))
    return folder, json.loads((folder / "manifest.json").read_text())


def test_missing_corrupt_or_stale_shipped_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           no_export: Path) -> None:
    from hemocount.detect import load_detector

    folder, manifest = _weights_copy(tmp_path, monkeypatch)
    onnx_file = folder / "yolo11n-cells.onnx"
    assert load_detector("yolo", engine="onnx").weights.sha256  # runs without the .pt
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped: the remembered sha256 must not hide it
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=f"{onnx_file}: sha256 mismatch"):
        load_detector("yolo", engine="openvino")
    onnx_file.write_bytes(bytes(data[:1000]))
    with pytest.raises(WeightsError, match=f"{onnx_file}: sha256 mismatch"):
        load_detector("yolo", engine="onnx")
    onnx_file.unlink()
    with pytest.raises(WeightsError, match=f"{onnx_file}: shipped ONNX file missing"):
        load_detector("yolo", engine="onnx")
    entry = next(e for e in manifest["weights"] if e["id"] == "yolo11n-cells")
    entry["onnx"]["exported_from"]["sha256"] = "0" * 64  # a retrained .pt whose ONNX was not exported again
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="exported from another version of yolo11n-cells.pt.*--ship"):
        load_detector("yolo", engine="onnx")
    assert not (no_export / "onnx").exists()


def test_hash_memo_rehashes_a_changed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hemocount import hash_memo

    monkeypatch.setenv("HEMOCOUNT_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.onnx"
    f.write_bytes(b"a" * 100)
    first = hash_memo.sha256_memo(f)
    assert first == sha256_file(f)
    calls = []
    monkeypatch.setattr(hash_memo, "sha256_file", lambda p: calls.append(p) or sha256_file(p))
    assert hash_memo.sha256_memo(f) == first and not calls  # remembered
    st = f.stat()
    f.write_bytes(b"b" * 100)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: ctime still changes
    assert hash_memo.sha256_memo(f) == sha256_file(f) != first and calls


def test_fp16_storage_computes_as_the_fp32_export(toy_classifiers: dict[str, Path], tmp_path: Path) -> None:
    from hemocount.engine import OrtRunner, OvRunner
    from hemocount.export import export_onnx
    from hemocount.onnx_fp16 import store_weights_fp16
    from hemocount.weights import resolve

    entry = resolve(str(toy_classifiers["wbc_subtype"]), task="wbc_subtype", backend="resnet")
    export_onnx(entry, tmp_path / "fp32.onnx")
    assert store_weights_fp16(tmp_path / "fp32.onnx", tmp_path / "fp16.onnx") > 10
    assert (tmp_path / "fp16.onnx").stat().st_size < 0.6 * (tmp_path / "fp32.onnx").stat().st_size
    x = np.random.default_rng(0).normal(0, 1, (3, 3, 32, 32)).astype(np.float32)
    for runner in (OrtRunner, lambda p: OvRunner(p, "fp32")):
        a, b = runner(tmp_path / "fp32.onnx").run(x), runner(tmp_path / "fp16.onnx").run(x)
        # the toy checkpoint is stored in fp16 (as the shipped ones): fp16 storage loses nothing
        assert np.abs(a - b).max() <= 1e-5


LEAN = (
    "import sys\n"
    "for m in ('torch', 'torchvision', 'ultralytics', 'onnx'):\n"
    "    sys.modules[m] = None  # as if not installed: find_spec says None, import fails\n"
    "from hemocount.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "assert not [m for m in ('torch', 'ultralytics') if sys.modules.get(m)]\n"
    "sys.exit(code)\n"
)


def _lean(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEMOCOUNT_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-c", LEAN, *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env, check=False)


def test_lean_install_counts_and_names_the_train_extra(tmp_path: Path) -> None:
    res = _lean(["-q", "count", str(SAMPLES), "-o", "out"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["engine"]["detector"] == run["engine"]["classifiers"] == "openvino"  # auto: an installed engine
    assert not (tmp_path / "cache" / "onnx").exists()
    for args in (["count", str(SAMPLES), "-o", "o1", "--engine", "torch"],
                 ["count", str(SAMPLES), "-o", "o2", "--detector", "frcnn"],
                 ["train", "detect", "--out", "o3"],
                 ["train", "classify", "--task", "all", "--out", "o4"],
                 ["export", "--weights", "yolo11n-cells"],
                 ["eval", "classify", "--task", "all", "--engine", "torch"],
                 ["count", str(SAMPLES), "-o", "o5", "--weights", str(ROOT / "weights" / "yolo11n-cells.pt")]):
        res = _lean(args, tmp_path)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, (args, res.stderr[-2000:])
        assert lines[0].startswith("hemocount: error: ") and lines[0].endswith('pip install "hemocount[train]"'), lines
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3", "o4"))


def test_library_without_torch_names_the_train_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from hemocount import Pipeline, extras

    monkeypatch.setattr(extras, "missing_train_modules", lambda modules=extras.TRAIN_MODULES: list(modules))
    with pytest.raises(HemocountError, match=r'--engine torch needs torch.*pip install "hemocount\[train\]"'):
        Pipeline.from_pretrained(engine="torch")
    with pytest.raises(HemocountError, match=r'--detector frcnn needs torch.*pip install "hemocount\[train\]"'):
        Pipeline.from_pretrained(detector="frcnn")
