"""MixStyle (Zhou et al., ICLR 2021), a training-only feature augmentation for unseen domains.

A lab's stain and camera show up in the early layers as per-channel feature statistics (each map's mean and
standard deviation). During training, MixStyle swaps part of each crop's statistics with another crop's in the
batch, so the later layers cannot key on them. It is added as forward hooks: the model's state-dict keys,
its evaluation behaviour and its ONNX/OpenVINO export are unchanged (the hooks do nothing in ``eval()`` mode).
"""

from __future__ import annotations

from typing import Any

#: ResNet stages after which statistics are mixed. The paper mixes after the first three stages, not the last
#: one, whose statistics carry the class.
LAYERS = ("layer1", "layer2", "layer3")


def mix_statistics(x: Any, alpha: float = 0.1, eps: float = 1e-6) -> Any:
    """``x`` (B, C, H, W) with each sample's per-channel mean and std mixed with a random other sample's,
    by a weight drawn from Beta(alpha, alpha) per sample (alpha 0.1: most draws are near 0 or 1)."""
    import torch

    b = x.shape[0]
    mu = x.mean(dim=(2, 3), keepdim=True)
    sig = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt()
    mu, sig = mu.detach(), sig.detach()  # as in the paper: no gradient through the statistics
    lam = torch.distributions.Beta(alpha, alpha).sample((b, 1, 1, 1)).to(x.dtype)
    perm = torch.randperm(b)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return (x - mu) / sig * sig_mix + mu_mix


def add_mixstyle(model: Any, p: float, alpha: float = 0.1, layers: tuple[str, ...] = LAYERS) -> list[Any]:
    """Hook MixStyle onto ``model``'s ``layers`` (a torchvision ResNet): in training mode, each hooked stage's
    output is mixed with probability ``p`` per batch. Returns the hook handles (``handle.remove()`` undoes it).

    Randomness comes from torch's global generator (seeded by the training run), not from the run's
    sampling generator, so adding MixStyle does not change which crops a run draws.
    """
    import torch

    if not 0 < p <= 1:
        raise ValueError(f"mixstyle probability must be in (0, 1], got {p}")

    def hook(module: Any, _inputs: Any, output: Any) -> Any:
        if not module.training or output.shape[0] < 2 or float(torch.rand(1)) >= p:
            return None
        return mix_statistics(output, alpha)

    return [getattr(model, name).register_forward_hook(hook) for name in layers]
