"""``hemocount export``: ONNX export of a detector or classifier, by manifest id or checkpoint.

The exporters live with their loaders (``export_yolo_onnx`` in :mod:`hemocount.detect.yolo`,
``export_classifier_onnx`` in :mod:`hemocount.classify.infer`); :func:`hemocount.onnx_cache.write_export`
writes every export atomically with a JSON record next to it (``<file>.onnx.json``): source weights id
and sha256, classes, input size, normalisation, opset and the export's own sha256, which is how a
corrupt cached file is recognised. Exporting is a local conversion; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hemocount.errors import HemocountError, WeightsError
from hemocount.onnx_cache import OPSET, record_path, write_export  # noqa: F401 - OPSET, record_path: for callers
from hemocount.weights import DEFAULT_DETECTOR, WeightsEntry, list_weights, resolve

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
    """Export ``entry`` to ``dest`` (atomically) with the exporter of its task and write its JSON record; returns
    the record."""
    if entry.task == "detect":
        from hemocount.detect.yolo import export_yolo_onnx as make
    else:
        from hemocount.classify.infer import export_classifier_onnx as make
    return write_export(entry, dest, make)


def ship_onnx(weights_id: str) -> dict[str, Any]:
    """Export the manifest entry ``weights_id`` to ``weights/<id>.onnx`` with fp16-stored weights (see
    :mod:`hemocount.onnx_fp16`) and write its ``onnx`` block into the manifest (file, sha256, bytes,
    precision, the ``.pt`` it came from and the export record): what the plain install runs.

    Run it after every retrain of a shipped model: the engines refuse a shipped file exported from
    another ``.pt`` than the manifest's.

    Returns:
        The manifest's new ``onnx`` block.

    Raises:
        HemocountError: Unknown id, bad weights, or an unwritable ``weights/``.
    """
    import json
    import tempfile

    from hemocount.io import atomic_write_text
    from hemocount.onnx_fp16 import store_weights_fp16
    from hemocount.weights import sha256_file, weights_dir

    entry = resolve(weights_id, task=_task_of(weights_id), backend=None)
    if entry.meta.get("user_checkpoint"):
        raise HemocountError(f"{weights_id}: --ship takes a manifest id, not a checkpoint path")
    folder = weights_dir()
    dest = folder / f"{entry.id}.onnx"
    with tempfile.TemporaryDirectory(dir=folder, prefix=".ship-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        record = export_onnx(entry, fp32)
        half = Path(tmp) / "fp16.onnx"
        store_weights_fp16(fp32, half)
        half.chmod(0o644)
        half.replace(dest)
    block = {
        "file": dest.name, "sha256": sha256_file(dest), "bytes": dest.stat().st_size,
        "precision": "fp16 weights, fp32 compute (each weight tensor of 1024+ values stored in float16 and "
                     "cast to float32 in the graph)",
        "exported_from": {"file": entry.file, "sha256": entry.sha256},
        **{k: v for k, v in record.items() if k not in ("source", "onnx_sha256")},
    }
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for e in manifest["weights"]:
        if e["id"] == entry.id:
            e["onnx"] = block
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return block


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
