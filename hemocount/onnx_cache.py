"""The local cache of ONNX exports, keyed by the source weights' sha256, and how an export is written.

The model-specific exporters (``export_yolo_onnx`` in :mod:`hemocount.detect.yolo`,
``export_classifier_onnx`` in :mod:`hemocount.classify.infer`) are passed in by the loaders, so this module
imports neither them nor torch: the engines and the ONNX Runtime/OpenVINO counting path import no torch or
ultralytics when the export is already cached, and no module here imports back its callers.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hemocount.errors import HemocountError, WeightsError
from hemocount.io import atomic_write_json
from hemocount.weights import sha256_file

if TYPE_CHECKING:
    from hemocount.weights import WeightsEntry

log = logging.getLogger("hemocount")

CACHE_ENV = "HEMOCOUNT_CACHE"
#: Bumped whenever the export recipe changes, so older cached exports are redone.
EXPORT_VERSION = 2  # 2: classifier exports gain the "features" output (unfamiliar_lab)
#: Opset 17: supported by onnxruntime >= 1.13 and by torch's TorchScript exporter.
OPSET = 17
#: Writes the ONNX file of a weights entry into a temporary folder: returns the file and its record's fields.
Exporter = Callable[["WeightsEntry", Path], tuple[Path, dict[str, Any]]]


def cache_dir() -> Path:
    """Folder of cached ONNX exports: ``$HEMOCOUNT_CACHE/onnx``, else ``~/.cache/hemocount/onnx``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hemocount" / "onnx"


def record_path(onnx_path: Path) -> Path:
    """The JSON record written next to an export."""
    return onnx_path.with_name(onnx_path.name + ".json")


def cached_onnx(entry: WeightsEntry, make: Exporter) -> tuple[Path, dict[str, Any]]:
    """The ONNX export of ``entry`` from the local cache, exported first with ``make`` (which needs torch) if
    absent, stale or corrupt.

    Returns:
        The cached ``.onnx`` path and its JSON record.

    Raises:
        HemocountError: The cache folder cannot be written.
    """
    if not entry.sha256:
        raise WeightsError(f"{entry.path}: weights have no sha256, cannot key the ONNX cache")
    path = cache_dir() / f"{entry.sha256}.onnx"
    info, problem = _check_cached(path, entry.sha256, entry.task)
    if info is not None:
        return path, info
    from hemocount.extras import require_train

    require_train(f"exporting {entry.path.name} to ONNX" + (f" ({path.name}: {problem})" if problem else ""))
    if problem:
        log.warning("%s: %s; exporting %s again", path, problem, entry.id)
    else:
        log.info("exporting %s to ONNX once (cache: %s)", entry.id, path.parent)
    try:
        return path, write_export(entry, path, make)
    except OSError as exc:
        raise HemocountError(f"{path.parent}: cannot write the ONNX cache ({exc.strerror or exc}); "
                             f"set {CACHE_ENV} to a writable folder or use --engine torch") from None


def write_export(entry: WeightsEntry, dest: Path, make: Exporter) -> dict[str, Any]:
    """Export ``entry`` to ``dest`` with ``make`` (atomically), check it with onnx, write its JSON record; returns
    the record."""
    import onnx
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".export-") as tmp:
        made, info = make(entry, Path(tmp))
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


def _check_cached(path: Path, sha256: str, task: str) -> tuple[dict[str, Any] | None, str]:
    """(record, "") for a usable export; (None, problem) otherwise.

    The problem is "" when nothing usable is cached and that is no fault of the cache: nothing there, or
    an export of the same file for another task (a classifier given as a detector), which is then
    exported for ``task``, and fails with the loader's own error if the file is not such a model.
    """
    rec = record_path(path)
    if not rec.exists():
        return None, "ONNX file without its record (interrupted export?)" if path.exists() else ""
    try:
        info = json.loads(rec.read_text())
        ok = info["export_version"] == EXPORT_VERSION and info["source"]["sha256"] == sha256
        expected = info["onnx_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"unreadable export record {rec.name}"
    if not ok:
        return None, "cached export is from another hemocount version"
    if info.get("task") != task:
        return None, ""
    if not path.exists():
        return None, "cached ONNX file missing"
    from hemocount.hash_memo import sha256_memo

    if sha256_memo(path) != expected:
        return None, "cached ONNX file is corrupt (sha256 does not match its record)"
    return info, ""


__all__ = ["CACHE_ENV", "EXPORT_VERSION", "OPSET", "Exporter", "cache_dir", "cached_onnx", "record_path", "write_export"]
