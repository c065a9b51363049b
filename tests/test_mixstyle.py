"""MixStyle: mixes feature statistics in training only, keeps the model's keys and eval output."""

from __future__ import annotations

import pytest


def test_mix_statistics_swaps_statistics_and_keeps_content() -> None:
    import torch

    from hemocount.classify.mixstyle import mix_statistics

    torch.manual_seed(0)
    base = torch.randn(1, 4, 8, 8)
    x = torch.cat([base * 1.0 + 0.0, base * 3.0 + 5.0])  # same pattern, two "labs" of statistics
    y = mix_statistics(x, alpha=0.1)
    # each output keeps its own spatial pattern (normalised maps are unchanged) ...
    norm = (y - y.mean((2, 3), keepdim=True)) / y.std((2, 3), keepdim=True)
    ref = (base - base.mean((2, 3), keepdim=True)) / base.std((2, 3), keepdim=True)
    assert torch.allclose(norm[0], ref[0], atol=1e-3) and torch.allclose(norm[1], ref[0], atol=1e-3)
    # ... and its statistics lie between the two samples' (a convex mix)
    means = y.mean((2, 3))
    assert bool(((means > x.mean((2, 3)).min() - 1e-4) & (means < x.mean((2, 3)).max() + 1e-4)).all())


def test_hooks_act_in_training_only_and_keep_keys() -> None:
    import torch

    from hemocount.classify.mixstyle import add_mixstyle
    from hemocount.classify.model import build_resnet

    torch.manual_seed(0)
    model = build_resnet(5, arch="resnet18")
    keys = set(model.state_dict())
    x = torch.randn(6, 3, 32, 32) * torch.linspace(0.5, 2, 6).view(6, 1, 1, 1)
    model.eval()
    with torch.no_grad():
        plain = model(x)
        handles = add_mixstyle(model, 1.0)
        assert set(model.state_dict()) == keys
        assert torch.equal(model(x), plain)  # eval: untouched
        model.train()
        torch.manual_seed(1)
        assert not torch.allclose(model(x), plain)  # training: mixed
        for h in handles:
            h.remove()
        model.eval()
        assert torch.equal(model(x), plain)


def test_mixstyle_probability_is_checked() -> None:
    from hemocount.classify.mixstyle import add_mixstyle
    from hemocount.classify.model import build_resnet

    with pytest.raises(ValueError, match="mixstyle"):
        add_mixstyle(build_resnet(2, arch="resnet18"), 0.0)
