"""ONNX export of hemocount's models (torch and ultralytics); the cache of exports is :mod:`hemocount.onnx_cache`.

Every export is written atomically with a JSON record next to it (``<file>.onnx.json``): source
weights id and sha256, classes, input size, normalisation, opset and the export's own sha256, which
is how a corrupt cached file is recognised. Exporting is a local conversion; nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from hemocount.errors import HemocountError, WeightsError
from hemocount.io import atomic_write_json
from hemocount.onnx_cache import EXPORT_VERSION, record_path
from hemocount.weights import DEFAULT_DETECTOR, WeightsEntry, list_weights, resolve, sha256_file

log = logging.getLogger("hemocount")

#: Opset 17: supported by onnxruntime >= 1.13 and by torch's TorchScript exporter.
OPSET = 17
FORMATS = ("onnx",)


def export_weights(*, weights: str | None, fmt: str = "onnx", out: Path | None = None,
                   task: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Export a detector or classifier to ONNX (what ``hemocount export`` runs).

    Args:
        weights: Manifest id or checkpoint path (default: the shipped detector).
        fmt: Export format; only ``onnx``.
        out: Target ``.onnx`` file or an existing folder (default: ``./<id>.onnx``).
        task: ``detect``, ``wbc_subtype`` or ``all``; default: the manifest's, or read from the checkpoint.

    Returns:
        The ``.onnx`` path and its JSON record.

    Raises:
        HemocountError: Unknown format or task, bad weights, or an unwritable target.
    """
    if fmt not in FORMATS:
        raise HemocountError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    spec = weights or DEFAULT_DETECTOR
    task = task or _task_of(spec)
    if task not in ("detect", "wbc_subtype", "all"):
        raise HemocountError(f"unknown task {task!r}; valid: detect, wbc_subtype, all")
    entry = resolve(spec, task=task, backend="yolo" if task == "detect" else "resnet")
    dest = Path(out) if out is not None else Path(f"{entry.id}.onnx")
    if dest.is_dir():
        dest = dest / f"{entry.id}.onnx"
    try:
        return dest, export_onnx(entry, dest)
    except OSError as exc:
        raise HemocountError(f"{exc.filename or dest}: cannot write the export ({exc.strerror or exc})") from None


def export_onnx(entry: WeightsEntry, dest: Path) -> dict[str, Any]:
    """Export ``entry`` to ``dest`` (atomically) and write its JSON record; returns the record."""
    import onnx
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".export-") as tmp:
        if entry.task == "detect":
            made, info = _export_yolo(entry, Path(tmp))
        else:
            made, info = _export_classifier(entry, Path(tmp))
        try:
            onnx.checker.check_model(str(made))
        except Exception as exc:  # noqa: BLE001 - onnx raises its own ValidationError and protobuf errors
            raise WeightsError(f"{entry.path}: the ONNX export does not validate ({exc})") from None
        os.chmod(made, 0o644)
        os.replace(made, dest)
    record = {
        "format": "onnx", "export_version": EXPORT_VERSION, "opset": OPSET, "task": entry.task,
        "source": {"weights_id": entry.id, "file": str(entry.path), "sha256": entry.sha256},
        "onnx_sha256": sha256_file(dest), **info,
        "versions": {"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__},
    }
    atomic_write_json(record_path(dest), record)
    return record


def _export_yolo(entry: WeightsEntry, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """Ultralytics' own ONNX export (dynamic batch and size, no NMS in the graph, fp32, no onnxslim)."""
    from hemocount.detect.yolo import YoloDetector, load_ultralytics

    src = tmp / "model.pt"
    shutil.copyfile(entry.path, src)  # ultralytics writes the .onnx next to its source
    model = load_ultralytics(src, name=entry.path)
    YoloDetector(model, entry)  # checks the model's classes against hemocount's (and fills user-checkpoint fields)
    stride = int(max(model.model.stride))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notice that the TorchScript exporter is deprecated
        made = model.export(format="onnx", imgsz=entry.imgsz, dynamic=True, simplify=False, half=False, nms=False,
                            opset=OPSET, batch=1, device="cpu", verbose=False)
    names = model.names if isinstance(model.names, dict) else dict(enumerate(model.names))
    return Path(made), {
        "classes": list(entry.classes), "names": {str(k): str(v) for k, v in names.items()},
        "input_size": entry.imgsz, "stride": stride,
        "input": {"name": "images", "shape": ["batch", 3, "height", "width"], "dtype": "float32"},
        "normalisation": "BGR->RGB, /255; letterboxed to input_size (ultralytics LetterBox, grey 114 padding, "
                         "minimal stride-32 padding for same-size batches)",
        "output": "output0 (batch, 4 + classes, anchors): xywh in input pixels, class scores; NMS outside the graph",
    }


def _export_classifier(entry: WeightsEntry, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """torch's TorchScript-based ONNX exporter with a dynamic batch axis.

    The dynamo exporter (torch's default since 2.9) would add onnxscript as a dependency; the
    TorchScript one needs nothing more and is what ultralytics uses as well.
    """
    import torch

    from hemocount.classify.infer import load_torch_classifier
    from hemocount.classify.model import MEAN, STD

    model, meta = load_torch_classifier(entry, entry.task)
    model = model.to(memory_format=torch.contiguous_format)
    size = int(meta["size"])
    made = tmp / "model.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation and tracer notices; the export is checked after
        torch.onnx.export(model, (torch.zeros(2, 3, size, size),), str(made), dynamo=False, opset_version=OPSET,
                          input_names=["crops"], output_names=["logits"],
                          dynamic_axes={"crops": {0: "batch"}, "logits": {0: "batch"}})
    return made, {
        "classes": list(meta["classes"]), "input_size": size, "meta": meta,
        "input": {"name": "crops", "shape": ["batch", 3, size, size], "dtype": "float32"},
        "normalisation": {"order": "RGB", "scale": 1 / 255, "mean": list(MEAN), "std": list(STD),
                          "crop": f"square box around the WBC with {meta['pad']} context per side, resized to "
                                  f"{size} px (hemocount.classify.crops)"},
        "output": "logits (batch, classes); softmax gives the probabilities",
    }


def _task_of(spec: str) -> str:
    """The task of a manifest id, or of a checkpoint (hemocount classifiers record it; anything else: detect)."""
    for e in list_weights():
        if e.id == spec:
            return e.task
    path = Path(spec)
    if not path.is_file():
        raise WeightsError(f"{spec}: neither a manifest id nor a weights file")
    import torch

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a YOLO checkpoint is a pickled model, not loadable weights-only
        return "detect"
    task = ck.get("meta", {}).get("task") if isinstance(ck, dict) else None
    return task if task in ("wbc_subtype", "all") else "detect"
