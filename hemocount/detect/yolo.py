"""YOLO backend (ultralytics), offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv

from hemocount.detect.base import DetectorBase, same_shape_groups
from hemocount.errors import WeightsError
from hemocount.weights import DEFAULT_DETECTOR, WeightsEntry, resolve


class YoloDetector(DetectorBase):
    """Ultralytics YOLO model mapped onto hemocount's classes."""

    name = "yolo"
    #: Images per call in ``hemocount count``: 8 measured faster than 4 on 2 cores (fewer, fuller calls).
    batch = 8

    def __init__(self, model: Any, weights: WeightsEntry, device: str = "cpu") -> None:
        self.model = model
        self.weights = weights
        self.device = device
        self.map_classes(model.names if isinstance(model.names, dict) else dict(enumerate(model.names)))
        if not weights.imgsz:
            weights.imgsz = int(getattr(model, "overrides", {}).get("imgsz", 640) or 640)

    @classmethod
    def from_weights(cls, spec: str | None, *, device: str = "cpu", engine: str = "auto",
                     precision: str = "auto") -> YoloDetector:
        """Load a manifest id or ``.pt`` checkpoint (sha256-checked for shipped weights).

        Args:
            spec: Manifest id or checkpoint path (default: the shipped detector).
            device: Torch device (the onnx engine runs on CPU).
            engine: ``torch``, ``onnx`` (ONNX Runtime on an export cached by the weights' sha256),
                ``openvino`` (OpenVINO on the same export) or ``auto`` (the fastest installed on CPU, see
                ``hemocount.engine.AUTO``).
            precision: ``auto``, ``fp32`` or ``bf16`` (see ``hemocount.engine.PRECISIONS``).
        """
        from hemocount.engine import check_precision, resolve_engine

        engine = resolve_engine(engine, "detect")
        check_precision(precision, engine)
        if engine == "torch":
            entry = resolve(spec or DEFAULT_DETECTOR, task="detect", backend="yolo")
            return cls(load_ultralytics(entry.path), entry, device)
        from hemocount.detect.yolo_onnx import OnnxYolo
        from hemocount.shipped_onnx import onnx_model

        # The shipped ONNX file; torch and ultralytics only to export a user's checkpoint once.
        entry, path, info = onnx_model(spec or DEFAULT_DETECTOR, task="detect", backend="yolo", make=export_yolo_onnx)
        det = cls(OnnxYolo(path, info, engine, precision), entry, "cpu")
        det.engine = engine
        return det

    @property
    def precision(self) -> str:
        """``fp32`` or ``bf16``: the arithmetic the network runs in."""
        return getattr(getattr(self.model, "runner", None), "precision", "fp32")

    @property
    def compile_seconds(self) -> float:
        """Seconds the engine has spent compiling input shapes (openvino; 0 for the others)."""
        return float(getattr(getattr(self.model, "runner", None), "compile_seconds", 0.0))

    def predict(
        self, images: list[np.ndarray], *, conf: dict[str, float], iou: float, max_det: int
    ) -> list[sv.Detections]:
        """Detect cells; boxes are in each image's pixel coordinates."""
        if not images:
            return []
        # Ultralytics pads a mixed-shape batch to a square but a same-shape batch minimally.
        results: list[Any] = [None] * len(images)
        for idx in same_shape_groups(images):
            res = self.model.predict(
                [images[i] for i in idx], imgsz=self.weights.imgsz, conf=min(conf.values()), iou=iou,
                max_det=max_det, device=self.device, verbose=False, batch=len(idx),
            )
            for i, r in zip(idx, res):
                results[i] = r
        # ultralytics Results (torch), or sv.Detections already (OnnxYolo)
        return [self.finish(res if isinstance(res, sv.Detections) else sv.Detections.from_ultralytics(res), conf)
                for res in results]


def load_ultralytics(path: Path, name: Path | None = None) -> Any:
    """``ultralytics.YOLO`` for a checkpoint, offline (errors name ``name`` or ``path``); torch's threads as
    :mod:`hemocount.runtime` was asked to set them, if it was.

    Raises:
        WeightsError: The file is not loadable YOLO weights.
    """
    from hemocount.detect.ultra_env import ultralytics

    ul = ultralytics()
    try:
        return ul.YOLO(str(path), task="detect")
    except Exception as exc:  # noqa: BLE001 - torch/pickle raise many types for a bad file
        first = (str(exc).strip().splitlines() or [""])[0]  # ultralytics appends multi-line advice
        raise WeightsError(f"{name or path}: cannot load YOLO weights ({type(exc).__name__}: {first})") from None


def export_yolo_onnx(entry: WeightsEntry, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """Ultralytics' own ONNX export (dynamic batch and size, no NMS in the graph, fp32, no onnxslim)."""
    import shutil
    import warnings

    from hemocount.onnx_cache import OPSET

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
