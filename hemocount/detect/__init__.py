"""Cell detectors behind one interface, looked up by name and imported lazily."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from hemocount.errors import HemocountError

if TYPE_CHECKING:
    from hemocount.detect.base import Detector

#: Backend name -> "module:Class"; modules are imported only when used.
BACKENDS: dict[str, str] = {
    "yolo": "hemocount.detect.yolo:YoloDetector",
    "frcnn": "hemocount.detect.frcnn:FrcnnDetector",
    "classical": "hemocount.detect.classical:ClassicalDetector",
}

#: Backends with an ONNX path (``engine="onnx"`` or ``"openvino"``); the others run on their own engine.
ONNX_BACKENDS = frozenset({"yolo"})
#: Backends that run only on torch (the ``train`` extra), whatever the engine.
TORCH_BACKENDS = frozenset({"frcnn"})


def require_backend(name: str) -> None:
    """Fail in one line if backend ``name`` needs the training stack and it is not installed.

    Raises:
        HemocountError: ``--detector frcnn needs torch, ... : pip install "hemocount[train]"``.
    """
    if name in TORCH_BACKENDS:
        from hemocount.extras import require_train

        require_train(f"--detector {name}", ("torch", "torchvision"))


def load_detector(name: str, weights: str | None = None, *, device: str = "cpu", engine: str = "auto",
                  precision: str = "auto") -> Detector:
    """Build detector backend ``name`` with ``weights`` (a manifest id or a checkpoint path).

    ``engine`` is ``torch``, ``onnx`` (ONNX Runtime on a cached export), ``openvino`` (OpenVINO on the
    same export) or ``auto``; ``precision`` is ``auto``, ``fp32`` or ``bf16`` (see ``hemocount.engine``).

    Raises:
        HemocountError: Unknown backend (the message lists the valid names) or bad weights.
    """
    if name not in BACKENDS:
        raise HemocountError(f"unknown detector {name!r}; valid: {', '.join(sorted(BACKENDS))}")
    require_backend(name)
    module, cls = BACKENDS[name].split(":")
    factory = getattr(importlib.import_module(module), cls)
    if name in ONNX_BACKENDS:
        return factory.from_weights(weights, device=device, engine=engine, precision=precision)
    if engine in ("onnx", "openvino"):
        raise HemocountError(f"detector {name!r} has no ONNX path; --engine {engine} is available for: "
                             f"{', '.join(sorted(ONNX_BACKENDS))}")
    if precision == "bf16":
        raise HemocountError(f"detector {name!r} computes in fp32 only; precision bf16 is available for: "
                             f"{', '.join(sorted(ONNX_BACKENDS))} with --engine openvino")
    return factory.from_weights(weights, device=device)


__all__ = ["BACKENDS", "ONNX_BACKENDS", "TORCH_BACKENDS", "load_detector", "require_backend"]
