"""Inference engines: torch, or ONNX Runtime on a cached ONNX export of the same weights (CPU)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hemocount.errors import HemocountError, WeightsError

log = logging.getLogger("hemocount")

ENGINES: tuple[str, ...] = ("auto", "torch", "onnx")

#: What ``engine="auto"`` runs, per model kind: the faster engine on CPU as measured by
#: ``benchmarks/count_speed.py`` (numbers in README, "Speed").
AUTO: dict[str, str] = {"detect": "onnx", "classify": "onnx"}


def resolve_engine(engine: str, kind: str) -> str:
    """Turn ``auto``/``torch``/``onnx`` into the engine to run for a ``detect`` or ``classify`` model.

    ``auto`` falls back to torch when onnxruntime is not installed.

    Raises:
        HemocountError: Unknown engine name.
    """
    if engine not in ENGINES:
        raise HemocountError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    choice = AUTO[kind]
    if choice == "onnx" and not _has_onnxruntime():
        log.info("onnxruntime not installed: using the torch engine")
        return "torch"
    return choice


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def ort_session(path: Path) -> Any:
    """An ONNX Runtime CPU session for ``path``, one intra-op thread per core.

    Raises:
        WeightsError: onnxruntime is missing or cannot load the file.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise HemocountError("the onnx engine needs onnxruntime (pip install onnxruntime)") from None

    from hemocount.detect.ultra_env import core_count

    so = ort.SessionOptions()
    so.intra_op_num_threads = core_count()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep instead of spinning: on a shared 2-core machine spinning steals the cores
    # other work (decoding, crops, the other model) needs, and measured slower, not faster.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind types for bad files
        raise WeightsError(f"{path}: cannot load ONNX model ({type(exc).__name__}: {str(exc)[:200]})") from None


__all__ = ["AUTO", "ENGINES", "ort_session", "resolve_engine"]
