"""Stain augmentation in optical-density space (HED jitter, Tellez et al. 2018).

Why: labs differ mostly in stain uptake, which acts multiplicatively on light, i.e. additively and
per-stain in optical density. Jittering each stain's density simulates another lab's stain more
faithfully than hue/saturation jitter of RGB.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hemocount.stain import HED_FROM_RGB, RGB_FROM_HED

_RGB_FROM_HED = RGB_FROM_HED.astype(np.float32)
_HED_FROM_RGB = HED_FROM_RGB.astype(np.float32)
_EPS = 1e-3


def hed_jitter(img: Any, sigma: float, gen: Any) -> Any:
    """Scale and shift each stain's optical density of a ``(3, H, W)`` float image in [0, 1].

    Args:
        img: RGB tensor in [0, 1].
        sigma: Strength: each stain's density is multiplied by U(1-sigma, 1+sigma) and shifted by U(-sigma, sigma).
        gen: ``torch.Generator`` (seeded: augmentation stays reproducible).
    """
    import torch

    od = -torch.log(img.clamp(min=_EPS))  # (3, H, W)
    hed = torch.einsum("chw,cd->dhw", od, torch.from_numpy(_HED_FROM_RGB))
    alpha = 1 + sigma * (2 * torch.rand(3, 1, 1, generator=gen) - 1)
    beta = sigma * (2 * torch.rand(3, 1, 1, generator=gen) - 1)
    od = torch.einsum("dhw,dc->chw", hed * alpha + beta, torch.from_numpy(_RGB_FROM_HED))
    return torch.exp(-od).clamp(0, 1)
