"""The ONNX Runtime / OpenVINO counting path without torch: numpy pre/post-processing equal to ultralytics',
numpy crop normalisation equal to torch's, no torch/ultralytics import with a warm export cache, and model
loading that leaves the process's thread settings alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hemocount.detect import yolo_onnx as yo

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
ROOT = SAMPLES.parent


def _ultralytics():
    from hemocount.detect.ultra_env import ultralytics

    ultralytics()  # offline config, and torchvision's NMS kernel as in the torch engine
    import torch
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils import nms, ops

    return torch, LetterBox, nms, ops


def _fields() -> list[np.ndarray]:
    """The sample fields, and crops/resizes of odd sizes (thin, wide, upscaled, a 3-pixel sliver)."""
    import cv2

    imgs = [cv2.imread(str(p)) for p in sorted(SAMPLES.glob("*.jpg"))]
    assert len(imgs) >= 3
    return imgs + [imgs[0][:301, :517].copy(), imgs[1][:97, :611].copy(), cv2.resize(imgs[2], (1283, 419)),
                   cv2.resize(imgs[1][:50, :70], (211, 143)), imgs[0][:, :3].copy()]


def test_letterbox_equals_ultralytics() -> None:
    _, LetterBox, _, _ = _ultralytics()
    imgs = _fields()
    for batch in [[im] for im in imgs] + [imgs[:3], [imgs[0], imgs[4]]]:
        same = len({im.shape for im in batch}) == 1  # ultralytics' predictor: minimal padding for same shapes
        for imgsz, stride in ((416, 32), (640, 32), (128, 16)):
            lb = LetterBox((imgsz, imgsz), auto=same, stride=stride)
            ref = np.ascontiguousarray(np.stack([lb(image=im) for im in batch])[..., ::-1].transpose(0, 3, 1, 2))
            got = yo.preprocess(batch, imgsz, stride)
            assert got.dtype == np.float32 and got.shape == ref.shape
            assert np.array_equal(got, ref.astype(np.float32) / np.float32(255))


def _compare_postprocess(y: np.ndarray, input_shape: tuple[int, int], images: list[np.ndarray], conf: float,
                         iou: float, max_det: int) -> int:
    torch, _, nms, ops = _ultralytics()
    ref = nms.non_max_suppression(torch.from_numpy(y), conf, iou, None, False, max_det=max_det, nc=0)
    got = yo.non_max_suppression(y, conf, iou, max_det)
    n = 0
    for r, g, im in zip(ref, got, images):
        r[:, :4] = ops.scale_boxes(input_shape, r[:, :4], im.shape)
        r = r.numpy()
        assert g.shape == r.shape and len(g) <= max_det
        assert np.array_equal(g[:, 5], r[:, 5])  # classes, in the same (confidence) order
        assert np.abs(g[:, 4] - r[:, 4]).max(initial=0) <= 1e-6
        assert np.abs(yo.scale_boxes(input_shape, g[:, :4], im.shape) - r[:, :4]).max(initial=0) <= 1e-3
        n += len(g)
    return n


def test_postprocess_equals_ultralytics_on_sample_fields() -> None:
    """The shipped detector's ONNX output on real fields and odd sizes: numpy NMS + box scaling = ultralytics'."""
    from hemocount.detect.yolo import export_yolo_onnx
    from hemocount.engine import open_runner
    from hemocount.onnx_cache import cached_onnx
    from hemocount.weights import DEFAULT_DETECTOR, resolve

    entry = resolve(DEFAULT_DETECTOR, task="detect", backend="yolo")
    path, info = cached_onnx(entry, export_yolo_onnx)
    runner = open_runner(path, "onnx")
    imgs = _fields()
    total = 0
    for batch in [[im] for im in imgs] + [imgs[:3]]:
        x = yo.preprocess(batch, entry.imgsz, int(info["stride"]))
        y = runner.run(x)
        for conf, iou, max_det in ((0.05, 0.6, 300), (0.25, 0.45, 1000), (0.01, 0.7, 5)):
            total += _compare_postprocess(y, x.shape[2:], batch, conf, iou, max_det)
    assert total > 500


def test_nms_equals_ultralytics_on_crowded_random_boxes() -> None:
    """Many overlapping boxes of several classes (class-aware NMS, the max_det cut, empty images)."""
    rng = np.random.default_rng(0)
    imgs = [np.zeros((480, 640, 3), np.uint8)] * 3
    for trial in range(5):
        n, nc = 2000, 3
        y = np.zeros((3, 4 + nc, n), np.float32)
        y[:, 0] = rng.uniform(0, 416, (3, n))
        y[:, 1] = rng.uniform(0, 320, (3, n))
        y[:, 2:4] = rng.uniform(4, 60, (3, 2, n))
        y[:, 4:] = rng.uniform(0, 1, (3, nc, n)) ** 3
        y[2, 4:] = 0.0  # nothing above any threshold
        assert _compare_postprocess(y, (320, 416), imgs, 0.1 * trial, 0.5, 50 + 100 * trial) > 0


def test_classifier_normalisation_equals_torch() -> None:
    import torch

    from hemocount.classify.crops import normalize_crops
    from hemocount.classify.infer import softmax
    from hemocount.classify.train import normalize, to_tensor

    crops = np.random.default_rng(1).integers(0, 256, (7, 64, 64, 3), dtype=np.uint8)
    got = normalize_crops(crops)
    assert got.dtype == np.float32 and got.shape == (7, 3, 64, 64)
    assert np.array_equal(got, normalize(to_tensor(crops)).numpy())
    logits = np.random.default_rng(2).normal(0, 8, (7, 5)).astype(np.float32)
    assert np.abs(softmax(logits) - torch.softmax(torch.from_numpy(logits), dim=1).numpy()).max() <= 1e-6


def _probe(body: str, tmp_path: Path) -> dict:
    """Run ``body`` in a fresh interpreter (warm export cache) and report what it imported and set."""
    code = (
        "import json, os, sys\n"
        f"{body}\n"
        "mods = [m for m in ('torch', 'torchvision', 'ultralytics') if m in sys.modules]\n"
        "env = [k for k in os.environ if k.startswith(('YOLO_', 'OMP_', 'NUMEXPR_'))]\n"
        "print(json.dumps({'modules': mods, 'env': env}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "OMP_", "NUMEXPR_"))}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env=env, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_pipeline_without_torch(engine: str, tmp_path: Path) -> None:
    """With the shipped ONNX files (nothing exported first), a library load + call and a CLI count import neither
    torch nor ultralytics."""
    if engine == "openvino":
        pytest.importorskip("openvino")
    sample = str(min(SAMPLES.glob("*.jpg")))
    api = _probe((
        "import hemocount\n"
        f"pipe = hemocount.Pipeline.from_pretrained(engine={engine!r})\n"
        f"r = pipe({sample!r})\n"
        "assert r.counts()['RBC'] > 5 and r.counts()['WBC'] >= 1, r.counts()\n"), tmp_path)
    assert api == {"modules": [], "env": []}
    cli = _probe((
        "from hemocount.cli import main\n"
        f"assert main(['-q', 'count', {str(SAMPLES)!r}, '-o', 'out', '--engine', {engine!r}]) == 0\n"), tmp_path)
    assert cli["modules"] == []
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["engine"]["detector"] == run["engine"]["classifiers"] == engine


def test_loading_changes_no_threads_unless_asked(tmp_path: Path) -> None:
    """Pipeline.from_pretrained leaves torch's thread count alone; threads=N sets it (and the engines')."""
    body = (
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "import hemocount\n"
        "from hemocount import runtime\n"
        "hemocount.Pipeline.from_pretrained(engine='torch', classify=False)\n"
        "assert torch.get_num_threads() == 1, torch.get_num_threads()\n"
        "hemocount.Pipeline.from_pretrained(engine='onnx', classify=False)\n"
        "assert torch.get_num_threads() == 1 and runtime._requested is None\n"
        "pipe = hemocount.Pipeline.from_pretrained(engine='onnx', classify=False, threads=2)\n"
        "assert torch.get_num_threads() == 2 and runtime.threads() == 2\n"
        "assert pipe.detector.model.runner.session.get_session_options().intra_op_num_threads == 2\n"
    )
    _probe(body, tmp_path)


def test_export_is_imported_only_by_the_cli() -> None:
    """No import circle through the exporter: the engines, the ONNX cache and the loaders never import it (they
    are given the model's exporter), so only ``hemocount export`` does."""
    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "hemocount").rglob("*.py")
                   if any(s in p.read_text() for s in ("hemocount.export import", "from hemocount import export")))
    assert users == ["hemocount/cli.py"]
