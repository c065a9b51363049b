"""ResNet-50 classifiers (torchvision), built with no downloads; optional user weights."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from hemocount.errors import WeightsError

log = logging.getLogger("hemocount")

#: ImageNet statistics, so users' ImageNet-pretrained weights fit without changes.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


#: ``input_norm`` values: ``imagenet`` (only the fixed mean/std of the preprocessing) or ``instance``.
INPUT_NORMS = ("imagenet", "instance")


def build_resnet(num_classes: int, *, arch: str = "resnet50", norm: str = "gn", weights: str | None = None,
                 input_norm: str = "imagenet") -> Any:
    """Build a torchvision ResNet with ``num_classes`` outputs.

    Args:
        num_classes: Output classes.
        arch: ``resnet50`` (the product's model) or ``resnet18`` (toy/tests).
        norm: ``gn`` (GroupNorm, 32 groups: robust with tiny batches and domain shift) or ``bn``.
        weights: None (random init, never downloads), a torchvision weights enum name such as
            ``ResNet50_Weights.IMAGENET1K_V2`` (downloads on the user's machine, ``bn`` only),
            or a path to a state-dict checkpoint (the final layer is skipped if its shape differs).
        input_norm: ``instance`` standardises each crop's channels (mean 0, std 1 over its pixels) as the
            model's first operation, so torch, ONNX Runtime and OpenVINO all apply it. Why: a lab's stain and
            camera shift a crop's colour statistics; per-crop channel standardisation was the only test-time
            normalisation that lifted every held-out lab of the leave-one-lab-out folds (mean val macro-F1
            0.541 -> 0.618, ``benchmarks/classif_colour_norm.py``).
    """
    from torch import nn
    from torchvision import models

    if arch not in ("resnet50", "resnet18"):
        raise WeightsError(f"unknown architecture {arch!r}; valid: resnet50, resnet18")
    if norm not in ("gn", "bn"):
        raise WeightsError(f"unknown norm {norm!r}; valid: gn, bn")
    if input_norm not in INPUT_NORMS:
        raise WeightsError(f"unknown input_norm {input_norm!r}; valid: {', '.join(INPUT_NORMS)}")
    norm_layer = partial(nn.GroupNorm, 32) if norm == "gn" else None
    ctor = getattr(models, arch)
    # Zero-init of the last norm in each residual block: each block starts as identity,
    # which is what lets a deep ResNet train from scratch on a few hundred images.
    model = ctor(weights=None, num_classes=num_classes, norm_layer=norm_layer, zero_init_residual=True)
    if input_norm == "instance":
        # eps 1e-3 (in ImageNet-normalised units): a flat crop is not blown up into noise
        model.conv1 = nn.Sequential(nn.InstanceNorm2d(3, eps=1e-3), model.conv1)
    if weights is None:
        return model
    from hemocount.weights import copy_fitting, read_start_weights

    state = read_start_weights(
        weights, examples="ResNet50_Weights.IMAGENET1K_V2",
        enum_error=None if norm == "bn" else "torchvision pretrained weights need --norm bn (they hold BatchNorm statistics)")
    # copy_fitting skips what does not fit, so a start checkpoint with the other input_norm would silently
    # leave conv1 (named conv1.1 under instance norm) at random. ImageNet-normalised -> instance: conv1 is
    # moved under the instance norm (both feed it per-channel standardised input; how the ALL model, whose
    # start was trained without it, gets the unseen-lab recipe); the other way round is refused.
    # (torchvision's ImageNet weights count as an ImageNet-normalised start.)
    trained_with = "instance" if any(k.startswith("conv1.1.") for k in state) else "imagenet"
    if trained_with == "imagenet" and input_norm == "instance" and "conv1.weight" in state:
        log.info("%s: trained without input norm; its conv1 is kept under the instance norm", weights)
        state = {("conv1.1.weight" if k == "conv1.weight" else k): v for k, v in state.items()}
    elif trained_with == "instance" and input_norm != "instance":
        raise WeightsError(f"{weights}: trained with input_norm {trained_with!r}, not {input_norm!r} "
                           f"(pass --input-norm {trained_with})")
    copy_fitting(model, state, required="layer1", misfit=f"{weights}: checkpoint does not fit {arch} with {norm} normalisation")
    return model


def logits_and_features(model: Any) -> Any:
    """A module running ``model`` (a torchvision ResNet) that returns ``(logits, pooled features)``: the
    features feed the ``unfamiliar_lab`` check (:mod:`hemocount.classify.familiarity`)."""
    import torch
    from torch import nn

    class LogitsAndFeatures(nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            n = self.net
            x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
            x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
            f = torch.flatten(n.avgpool(x), 1)
            return n.fc(f), f

    return LogitsAndFeatures(model).eval()
