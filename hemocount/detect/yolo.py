"""YOLO backend (ultralytics), offline."""

from __future__ import annotations

from typing import Any

import numpy as np
import supervision as sv

from hemocount import CELL_CLASSES
from hemocount.datasets.records import canonical_class
from hemocount.detect.base import filter_by_class_conf
from hemocount.errors import WeightsError
from hemocount.weights import DEFAULT_DETECTOR, WeightsEntry, resolve


class YoloDetector:
    """Ultralytics YOLO model mapped onto hemocount's classes."""

    name = "yolo"

    def __init__(self, model: Any, weights: WeightsEntry, device: str = "cpu") -> None:
        self.model = model
        self.weights = weights
        self.device = device
        names = model.names if isinstance(model.names, dict) else dict(enumerate(model.names))
        self._map: dict[int, int] = {}
        for idx, raw in names.items():
            cls = canonical_class(str(raw))
            if cls is None:
                raise WeightsError(f"{weights.path}: model class {raw!r} is not one of {', '.join(CELL_CLASSES)}")
            self._map[int(idx)] = CELL_CLASSES.index(cls)
        model_classes = [canonical_class(str(names[i])) for i in sorted(names)]
        if weights.classes and model_classes != list(weights.classes):
            raise WeightsError(f"{weights.path}: model classes {model_classes} do not match the manifest's "
                               f"{weights.classes}")
        self.classes = CELL_CLASSES
        if not weights.classes:
            weights.classes = [c for c in model_classes if c]
        if not weights.imgsz:
            weights.imgsz = int(getattr(model, "overrides", {}).get("imgsz", 640) or 640)

    @classmethod
    def from_weights(cls, spec: str | None, *, device: str = "cpu") -> YoloDetector:
        """Load a manifest id or ``.pt`` checkpoint (sha256-checked for shipped weights)."""
        from hemocount.detect.ultra_env import ultralytics, use_all_cores

        entry = resolve(spec or DEFAULT_DETECTOR, task="detect", backend="yolo")
        ul = ultralytics()
        use_all_cores()
        try:
            model = ul.YOLO(str(entry.path), task="detect")
        except Exception as exc:  # noqa: BLE001 - torch/pickle raise many types for a bad file
            raise WeightsError(f"{entry.path}: cannot load YOLO weights ({type(exc).__name__}: {exc})") from None
        return cls(model, entry, device)

    def predict(
        self, images: list[np.ndarray], *, conf: dict[str, float], iou: float, max_det: int
    ) -> list[sv.Detections]:
        """Detect cells; boxes are in each image's pixel coordinates."""
        if not images:
            return []
        results = self.model.predict(
            images, imgsz=self.weights.imgsz, conf=min(conf.values()), iou=iou, max_det=max_det,
            device=self.device, verbose=False, batch=len(images),
        )
        out = []
        for res in results:
            dets = sv.Detections.from_ultralytics(res)
            ids = np.array([self._map[int(i)] for i in dets.class_id], dtype=int)
            dets.class_id = ids
            dets.data["class_name"] = np.array([CELL_CLASSES[i] for i in ids], dtype=object).astype(str) \
                if len(ids) else np.array([], dtype=str)
            # The cap applies before the per-class filter: keep the raw count to flag capped images.
            raw = len(dets)
            kept = filter_by_class_conf(dets, conf)
            kept.metadata["raw_count"] = raw
            out.append(kept)
        return out
