"""Faster R-CNN ResNet-50 FPN backend (torchvision), built with no downloads.

A checkpoint is ``{"model": fp16 state dict, "meta": {...}}``; the metadata holds
everything needed to rebuild the network (classes, input size, anchors, norm)
and the training recipe. Label 0 is background; label ``k + 1`` is ``meta["classes"][k]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import supervision as sv

from hemocount.detect.base import DetectorBase, same_shape_groups
from hemocount.errors import WeightsError
from hemocount.weights import WeightsEntry, load_checkpoint, resolve

ARCH = "fasterrcnn_resnet50_fpn"
NORMS = ("gn", "frozen_bn")
#: Anchor sizes (two per FPN level P2..P6) for a 480-pixel short side, i.e. BCCD's own scale:
#: platelets ~30-50 px, RBCs ~75-120 px, WBCs ~115-240 px (5th-95th percentile of sqrt(area), BCCD train).
BASE_ANCHORS: tuple[tuple[int, int], ...] = ((24, 32), (41, 54), (71, 93), (122, 160), (210, 275))
BASE_SHORT_SIDE = 480
#: Cells are round; boxes are rarely more than 1.5x longer one way than the other.
ASPECT_RATIOS: tuple[float, ...] = (0.67, 1.0, 1.5)
DEFAULT_MAX_DET = 300


def anchor_sizes(min_size: int) -> list[list[int]]:
    """Anchor sizes per FPN level in model-input pixels for images resized to short side ``min_size``."""
    scale = min_size / BASE_SHORT_SIDE
    return [[max(4, round(s * scale)) for s in level] for level in BASE_ANCHORS]


def model_meta(*, classes: list[str] | tuple[str, ...], min_size: int, max_size: int | None = None,
               norm: str = "gn", anchors: list[list[int]] | None = None) -> dict[str, Any]:
    """The metadata that fully determines the network (stored in every checkpoint)."""
    return {"backend": "frcnn", "arch": ARCH, "classes": list(classes), "min_size": int(min_size),
            "max_size": int(max_size or round(min_size * 4 / 3)), "norm": norm,
            "anchors": anchors or anchor_sizes(min_size), "aspect_ratios": list(ASPECT_RATIOS)}


def build_frcnn(meta: dict[str, Any], *, max_det: int = DEFAULT_MAX_DET) -> Any:
    """Build an untrained Faster R-CNN ResNet-50 FPN from :func:`model_meta` (never downloads).

    ``norm="gn"`` (GroupNorm, 32 groups, all layers trainable) is for training from scratch:
    it does not depend on batch statistics, which two-image batches cannot estimate.
    ``norm="frozen_bn"`` (torchvision's default for pretrained backbones, 3 trainable stages)
    is for starting from a user's ImageNet or COCO weights.
    """
    from functools import partial

    from torch import nn
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.models.resnet import Bottleneck
    from torchvision.ops import FrozenBatchNorm2d

    if meta.get("norm") not in NORMS:
        raise WeightsError(f"unknown norm {meta.get('norm')!r}; valid: {', '.join(NORMS)}")
    gn = meta["norm"] == "gn"
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None,
                                   norm_layer=partial(nn.GroupNorm, 32) if gn else FrozenBatchNorm2d,
                                   trainable_layers=5 if gn else 3)
    if gn:
        # Each residual block starts as the identity: what lets a deep ResNet train from scratch.
        for m in backbone.body.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
    sizes = tuple(tuple(int(s) for s in level) for level in meta["anchors"])
    ratios = tuple(float(r) for r in meta["aspect_ratios"])
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=(ratios,) * len(sizes))
    rpn_head = RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0])
    return FasterRCNN(backbone, num_classes=len(meta["classes"]) + 1, min_size=int(meta["min_size"]),
                      max_size=int(meta["max_size"]), rpn_anchor_generator=anchors, rpn_head=rpn_head,
                      box_detections_per_img=max(DEFAULT_MAX_DET, max_det), box_score_thresh=0.001)


def save_frcnn(model: Any, path: Path, meta: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Save a compact fp16 state dict and its metadata (no optimiser state), atomically."""
    import torch

    from hemocount.io import _json_default

    meta = json.loads(json.dumps({**meta, **(extra or {})}, default=_json_default))  # loadable with weights_only
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    torch.save({"model": state, "meta": meta}, tmp)
    tmp.replace(path)


def load_frcnn(path: Path) -> tuple[Any, dict[str, Any]]:
    """Rebuild the model stored at ``path`` (a ``best.pt``/``last.pt`` or a shipped file).

    Raises:
        WeightsError: Unreadable file, not a hemocount Faster R-CNN checkpoint, or weights that do not fit.
    """
    ck = load_checkpoint(path, "Faster R-CNN weights")
    if not isinstance(ck, dict) or not isinstance(ck.get("meta"), dict) or ck["meta"].get("arch") != ARCH:
        raise WeightsError(f"{path}: not a hemocount Faster R-CNN checkpoint (no {ARCH} metadata)")
    meta = ck["meta"]
    try:
        model = build_frcnn(meta)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["model"].items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: Faster R-CNN weights do not fit their metadata ({first})") from None
    return model.eval(), meta


class FrcnnDetector(DetectorBase):
    """torchvision Faster R-CNN mapped onto hemocount's classes (torch, fp32; no ONNX path)."""

    name = "frcnn"

    def __init__(self, model: Any, meta: dict[str, Any], weights: WeightsEntry, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.meta = meta
        self.weights = weights
        self.device = device
        # torchvision reserves label 0 for the background: class k of the model is label k + 1
        self.map_classes({k + 1: str(raw) for k, raw in enumerate(meta["classes"])})
        if not weights.imgsz:
            weights.imgsz = int(meta["min_size"])

    @classmethod
    def from_weights(cls, spec: str | None, *, device: str = "cpu") -> FrcnnDetector:
        """Load a manifest id or checkpoint path (sha256-checked for shipped weights); none: the shipped model.

        Raises:
            WeightsError: No spec and no Faster R-CNN weights in the manifest, or bad weights.
        """
        from hemocount.runtime import apply_torch

        if not spec:
            from hemocount.weights import list_weights

            shipped = [e.id for e in list_weights() if e.task == "detect" and e.backend == "frcnn"]
            if not shipped:
                raise WeightsError("no Faster R-CNN weights are shipped; pass --weights with a checkpoint "
                                   "(e.g. runs/frcnn/best.pt from `hemocount train detect --backend frcnn`)")
            spec = shipped[-1]
        entry = resolve(spec, task="detect", backend="frcnn")
        model, meta = load_frcnn(entry.path)
        apply_torch()  # torch's threads only if hemocount.runtime was asked to set them
        return cls(model, meta, entry, device)

    def predict(
        self, images: list[np.ndarray], *, conf: dict[str, float], iou: float, max_det: int
    ) -> list[sv.Detections]:
        """Detect cells; boxes are in each image's pixel coordinates."""
        import torch

        if not images:
            return []
        heads = self.model.roi_heads
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img = min(conf.values()), iou, max_det
        # torchvision zero-pads a batch to its largest image.
        results: list[Any] = [None] * len(images)
        with torch.inference_mode():
            for idx in same_shape_groups(images):
                tensors = [torch.from_numpy(np.ascontiguousarray(images[i][:, :, ::-1])).permute(2, 0, 1)
                           .to(self.device).float().div_(255) for i in idx]
                for i, res in zip(idx, self.model(tensors)):
                    results[i] = res
        return [self.finish(sv.Detections(xyxy=res["boxes"].cpu().numpy().astype(np.float32).reshape(-1, 4),
                                          confidence=res["scores"].cpu().numpy().astype(np.float32),
                                          class_id=res["labels"].cpu().numpy().astype(int)), conf)
                for res in results]
