"""Shipped model weights as versioned data: ``weights/manifest.json`` plus checksummed files.

A weights spec is either a manifest id (``yolo11n-cells``) or a path to a
user's own checkpoint. Loading verifies the sha256 of shipped files; a missing
or mismatching file is an error, never a silent fallback to another model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hemocount.errors import WeightsError

WEIGHTS_ENV = "HEMOCOUNT_WEIGHTS_DIR"
DEFAULT_DETECTOR = "yolo11n-cells"


def weights_dir() -> Path:
    """Folder holding ``manifest.json``: ``$HEMOCOUNT_WEIGHTS_DIR``, else the package's ``weights/`` (an
    installed wheel: manifest and shipped ONNX files, no ``.pt``), else the checkout's ``weights/``."""
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV])
    here = Path(__file__).resolve().parent
    installed = here / "weights"
    return installed if (installed / "manifest.json").is_file() else here.parent / "weights"


@dataclass
class WeightsEntry:
    """One model in the manifest (or a user checkpoint described on the fly)."""

    id: str
    task: str
    backend: str
    file: str
    sha256: str | None
    classes: list[str]
    imgsz: int
    thresholds: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path = Path()

    def class_conf(self, override: float | None = None) -> dict[str, float]:
        """Per-class confidence thresholds (``override`` replaces all of them)."""
        conf = self.thresholds.get("conf", 0.25)
        if override is not None:
            return {c: float(override) for c in self.classes}
        if isinstance(conf, dict):
            return {c: float(conf.get(c, 0.25)) for c in self.classes}
        return {c: float(conf) for c in self.classes}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(folder: Path | None = None) -> dict[str, Any]:
    """Parse ``manifest.json``.

    Raises:
        WeightsError: The manifest is missing or not valid JSON.
    """
    path = (folder or weights_dir()) / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights manifest missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: cannot read weights manifest ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("weights"), list):
        raise WeightsError(f"{path}: manifest has no 'weights' list")
    return data


def list_weights(folder: Path | None = None) -> list[WeightsEntry]:
    """All manifest entries (files not checked)."""
    folder = folder or weights_dir()
    return [_entry(e, folder) for e in read_manifest(folder)["weights"]]


def _entry(e: dict[str, Any], folder: Path) -> WeightsEntry:
    known = {"id", "task", "backend", "file", "sha256", "classes", "imgsz", "thresholds"}
    try:
        return WeightsEntry(
            id=e["id"], task=e["task"], backend=e["backend"], file=e["file"], sha256=e["sha256"],
            classes=list(e["classes"]), imgsz=int(e["imgsz"]), thresholds=dict(e.get("thresholds", {})),
            meta={k: v for k, v in e.items() if k not in known}, path=folder / e["file"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{folder / 'manifest.json'}: entry {e.get('id', '?')!r} is malformed ({exc})") from None


def resolve(spec: str, *, task: str, backend: str | None = None, verify: bool = True,
            check_file: bool = True) -> WeightsEntry:
    """Turn a manifest id or a checkpoint path into a verified :class:`WeightsEntry`.

    Args:
        spec: Manifest id or checkpoint path.
        task: ``detect``, ``wbc_subtype`` or ``all``.
        backend: The backend the weights must be for (any if ``None``).
        verify: Check the file's sha256 against the manifest's.
        check_file: Check the manifest entry's ``.pt`` at all; ``False`` for an engine that runs the entry's
            shipped ONNX file instead (see :mod:`hemocount.shipped_onnx`), which an installed wheel has
            without the ``.pt``.

    Raises:
        WeightsError: Unknown id, missing file, or sha256 mismatch.
    """
    p = Path(spec)
    if p.suffix in (".pt", ".pth", ".onnx") or os.sep in spec:
        if not p.is_file():
            raise WeightsError(f"{p}: weights file not found")
        return WeightsEntry(id=p.stem, task=task, backend=backend or "yolo", file=p.name, sha256=sha256_file(p),
                            classes=[], imgsz=0, thresholds={}, meta={"user_checkpoint": True}, path=p)
    folder = weights_dir()
    entries = [e for e in list_weights(folder) if e.task == task]
    match = [e for e in entries if e.id == spec]
    if not match:
        valid = ", ".join(e.id for e in entries) or "none shipped"
        raise WeightsError(f"unknown {task} weights {spec!r}; valid: {valid} (or a path to a checkpoint)")
    entry = match[0]
    if backend and entry.backend != backend:
        raise WeightsError(f"weights {spec!r} are for backend {entry.backend!r}, not {backend!r}")
    if not check_file:
        return entry
    if not entry.path.is_file():
        # An installed wheel ships the manifest and the ONNX files, not the .pt training weights.
        hint = (f"; an installed hemocount has the ONNX files only: set {WEIGHTS_ENV} to a checkout's weights/"
                if folder == Path(__file__).resolve().parent / "weights" else "")
        raise WeightsError(f"{entry.path}: weights file missing (manifest id {entry.id}){hint}")
    if verify:
        digest = sha256_file(entry.path)
        if digest != entry.sha256:
            raise WeightsError(f"{entry.path}: sha256 mismatch (file {digest[:12]}…, manifest {str(entry.sha256)[:12]}…): "
                               "corrupt or replaced weights")
    return entry


def load_checkpoint(path: Path | str, what: str) -> Any:
    """``torch.load`` (tensors only) of a hemocount/torchvision checkpoint, or one clear WeightsError.

    torch has saved zip archives since 1.6; anything else (random bytes, an image, a truncated
    download) is refused before unpickling, because torch's legacy reader may emit warnings or odd
    errors on such bytes (random bytes once made it warn about "pickle protocol 116").
    """
    import zipfile

    import torch

    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{path}: cannot load {what} (not a PyTorch checkpoint file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise WeightsError(f"{path}: cannot load {what} ({type(exc).__name__}: {exc})") from None


def read_start_weights(spec: str, *, enum_error: str | None, examples: str) -> dict[str, Any]:
    """State dict of a user's starting weights: a checkpoint file or a torchvision weights enum name.

    Torchvision downloads enum weights into its cache; that happens only on the user's request.

    Args:
        spec: Path to a ``.pt`` checkpoint (a ``{"model": state}`` dict or a bare state dict) or an enum
            name such as ``ResNet50_Weights.IMAGENET1K_V2``.
        enum_error: Why enum weights do not fit the model being trained (None: they do).
        examples: Enum names shown when ``spec`` is neither a file nor an enum.

    Raises:
        WeightsError: Unreadable file, unusable or unknown enum name.
    """
    from torchvision import models

    if Path(spec).is_file():
        state = load_checkpoint(spec, "checkpoint")
        state = state.get("model", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise WeightsError(f"{spec}: not a state dict")
        return state
    if enum_error:
        raise WeightsError(enum_error)
    try:
        enum = models.get_weight(spec)
    except (ValueError, KeyError, AttributeError):
        raise WeightsError(f"{spec}: neither a file nor a torchvision weights name (e.g. {examples})") from None
    return enum.get_state_dict(progress=False)


def copy_fitting(model: Any, state: dict[str, Any], *, required: str, misfit: str) -> int:
    """Load the tensors of ``state`` whose names and shapes fit ``model``; returns how many.

    Raises:
        WeightsError: ``misfit``, when no tensor whose name starts with ``required`` fits.
    """
    own = model.state_dict()
    usable = {k: v.float() if v.is_floating_point() else v for k, v in state.items()
              if k in own and own[k].shape == v.shape}
    if not any(k.startswith(required) for k in usable):
        raise WeightsError(misfit)
    model.load_state_dict(usable, strict=False)
    return len(usable)
