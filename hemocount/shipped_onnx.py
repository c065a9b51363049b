"""The ONNX files shipped in ``weights/`` next to the ``.pt`` training weights, and how an engine gets one.

A manifest entry may carry an ``onnx`` block: the file, its sha256 and size, its precision, the sha256 of
the ``.pt`` it was exported from, and the export record (classes, input size, class names and stride for
the detector, the classifier metadata). When it does, the ONNX Runtime and OpenVINO engines run that file,
checked against its sha256; a missing, corrupt or stale file (exported from another ``.pt``) is an error
naming it, never a reason to export the ``.pt`` again or to run another model. Entries without the block
(a user's checkpoint, a model not yet exported) are exported once into the local cache
(:mod:`hemocount.onnx_cache`), which needs the training stack.

``hemocount export --weights ID --ship`` (re)writes a shipped file and its block (:func:`hemocount.export.ship_onnx`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hemocount.errors import WeightsError
from hemocount.onnx_cache import Exporter, cached_onnx
from hemocount.weights import WeightsEntry, resolve


def shipped_onnx(entry: WeightsEntry) -> tuple[Path, dict[str, Any]] | None:
    """The verified shipped ONNX file of a manifest entry and its export record; ``None`` if it ships none.

    Raises:
        WeightsError: The file is missing, its size or sha256 differs from the manifest's, or it was exported
            from another ``.pt`` than the entry's.
    """
    from hemocount.hash_memo import sha256_memo

    block = entry.meta.get("onnx")
    if entry.meta.get("user_checkpoint") or not isinstance(block, dict):
        return None
    path = entry.path.parent / str(block.get("file", ""))
    source = block.get("exported_from", {}).get("sha256")
    if source != entry.sha256:
        raise WeightsError(f"{path}: exported from another version of {entry.file} (sha256 {str(source)[:12]}…, "
                           f"manifest {str(entry.sha256)[:12]}…): export it again with "
                           f"hemocount export --weights {entry.id} --ship")
    if not path.is_file():
        raise WeightsError(f"{path}: shipped ONNX file missing (manifest id {entry.id})")
    size = path.stat().st_size
    digest = sha256_memo(path) if size == block.get("bytes") else f"{size} bytes"
    if digest != block.get("sha256"):
        raise WeightsError(f"{path}: sha256 mismatch (file {digest[:12]}…, manifest {str(block.get('sha256'))[:12]}…): "
                           "corrupt or replaced ONNX weights")
    return path, block


def onnx_model(spec: str, *, task: str, backend: str, make: Exporter) -> tuple[WeightsEntry, Path, dict[str, Any]]:
    """The manifest entry (or user checkpoint) ``spec`` and the ONNX file an engine runs for it: the shipped one
    if the manifest has one, else an export cached by the ``.pt``'s sha256 (made once with ``make``, which
    needs the training stack).

    Raises:
        WeightsError: Unknown id, or a missing or corrupt file.
        HemocountError: An export is needed and the training stack is not installed.
    """
    entry = resolve(spec, task=task, backend=backend, check_file=False)
    shipped = shipped_onnx(entry)
    if shipped is not None:
        return entry, *shipped
    entry = resolve(spec, task=task, backend=backend)  # the .pt must exist and match to be exported
    path, info = cached_onnx(entry, make)
    return entry, path, info


__all__ = ["onnx_model", "shipped_onnx"]
