"""Per-feature standardisation with statistics of one party's own data only."""

from __future__ import annotations

import torch

# A feature that is constant in the fitting data (e.g. MNIST's border pixels) keeps
# scale 1 instead of exploding; its centred value is then 0 on that data.
_MIN_STD = 1e-6


def feature_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation of ``x`` (``(m, d)``).

    Computed in float64 and returned as float32; a standard deviation below
    ``1e-6`` (constant feature, or a single sample) is replaced by 1.
    """
    x64 = x.to(torch.float64)
    mean = x64.mean(dim=0)
    std = x64.std(dim=0, correction=0)
    std = torch.where(std < _MIN_STD, torch.ones_like(std), std)
    return mean.to(torch.float32), std.to(torch.float32)


def standardise(
    x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """``(x - mean) / std`` as float32, ``stats`` from :func:`feature_stats`."""
    mean, std = stats
    return ((x.to(torch.float32) - mean) / std).contiguous()
