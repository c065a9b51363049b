"""Load a trained WBC classifier and classify crops in batches."""

from __future__ import annotations

from typing import Any

import numpy as np

from hemocount.classify.crops import crop_cells
from hemocount.errors import WeightsError
from hemocount.weights import WeightsEntry, resolve

DEFAULT_CLASSIFIERS = {"wbc_subtype": "resnet50-wbc-subtype", "all": "resnet50-all"}


class Classifier:
    """A ResNet classifier with its crop geometry and class names."""

    def __init__(self, model: Any, meta: dict[str, Any], weights: WeightsEntry) -> None:
        self.model = model.eval()
        self.meta = meta
        self.weights = weights
        self.task: str = meta["task"]
        self.classes: tuple[str, ...] = tuple(meta["classes"])
        self.size: int = int(meta["size"])
        self.pad: float = float(meta["pad"])

    @classmethod
    def from_weights(cls, spec: str | None, *, task: str) -> Classifier:
        """Load a manifest id or checkpoint path (sha256-checked for shipped weights)."""
        import torch

        from hemocount.classify.model import build_resnet
        from hemocount.detect.ultra_env import use_all_cores

        entry = resolve(spec or DEFAULT_CLASSIFIERS[task], task=task, backend="resnet")
        use_all_cores()
        try:
            ck = torch.load(entry.path, map_location="cpu", weights_only=True)
            meta, state = ck["meta"], ck["model"]
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
            raise WeightsError(f"{entry.path}: cannot load classifier ({type(exc).__name__}: {exc})") from None
        if meta.get("task") != task:
            raise WeightsError(f"{entry.path}: classifier is for task {meta.get('task')!r}, not {task!r}")
        if entry.classes and list(entry.classes) != list(meta["classes"]):
            raise WeightsError(f"{entry.path}: classes {meta['classes']} do not match the manifest's {entry.classes}")
        try:
            model = build_resnet(len(meta["classes"]), arch=meta["arch"], norm=meta["norm"])
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        except (KeyError, RuntimeError) as exc:
            raise WeightsError(f"{entry.path}: classifier weights do not fit its metadata ({exc})") from None
        model = model.to(memory_format=torch.channels_last)
        return cls(model, meta, entry)

    def predict_crops(self, crops_rgb: np.ndarray, batch: int = 64) -> np.ndarray:
        """Class probabilities ``(N, K)`` for RGB uint8 crops of size :attr:`size`."""
        from hemocount.classify.train import predict_probs

        return predict_probs(self.model, crops_rgb, batch)

    def predict(self, image_bgr: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Class probabilities for cells at ``boxes`` (xyxy) of a BGR image."""
        crops = crop_cells(image_bgr, boxes, self.size, self.pad)[..., ::-1]
        return self.predict_crops(crops)
