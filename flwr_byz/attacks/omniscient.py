"""Omniscient, colluding tampering: crafted from the honest updates of the round.

Each function takes ``honest``, the ``(h, d)`` matrix of the honest updates the
attackers observe, and returns the one ``(d,)`` update every Byzantine node sends.
Statistics are computed in float64 and the result is cast back to ``honest.dtype``.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

PERTURBATIONS: tuple[str, ...] = ("std", "unit-vec", "sign")


def _check(honest: torch.Tensor) -> torch.Tensor:
    if honest.ndim != 2 or honest.shape[0] < 1:
        raise ValueError(
            f"honest has shape {tuple(honest.shape)}; expected (h, d) with h >= 1"
        )
    return honest.to(torch.float64)


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s z for n workers of which f are Byzantine.

    ``s = floor(n/2 + 1) − f`` honest workers must be "won over";
    ``z = Φ⁻¹((n − s) / n)``. For ``f >= n/2`` the formula leaves (0, 1); s is then
    clamped to 1, the most aggressive z that stays finite.
    """
    if n < 1 or not 0 <= f <= n:
        raise ValueError(f"n={n}, f={f}: need n >= 1 and 0 <= f <= n")
    s = max(n // 2 + 1 - f, 1)
    p = min(max((n - s) / n, 1e-6), 1 - 1e-6)
    return NormalDist().inv_cdf(p)


def alie(honest: torch.Tensor, z: float) -> torch.Tensor:
    """A Little Is Enough (Baruch et al., 2019): ``mean − z · std`` per coordinate.

    ``std`` is the population standard deviation of the honest updates, as in the
    authors' code. Use :func:`alie_z` for the paper's z.
    """
    x = _check(honest)
    out = x.mean(dim=0) - z * x.std(dim=0, correction=0)
    return out.to(honest.dtype)


def ipm(honest: torch.Tensor, epsilon: float = 0.5) -> torch.Tensor:
    """Inner-product manipulation (Xie et al., 2019): ``−ε · mean(honest)``."""
    x = _check(honest)
    return (-epsilon * x.mean(dim=0)).to(honest.dtype)


def _deviation(x: torch.Tensor, mean: torch.Tensor, perturbation: str) -> torch.Tensor:
    if perturbation == "std":
        return x.std(dim=0, correction=0)
    if perturbation == "unit-vec":
        norm = torch.linalg.vector_norm(mean)
        return mean / norm if norm > 0 else torch.zeros_like(mean)
    if perturbation == "sign":
        return torch.sign(mean)
    raise ValueError(
        f"perturbation={perturbation!r} is not known; valid values: "
        f"{', '.join(PERTURBATIONS)}"
    )


def min_max(honest: torch.Tensor, perturbation: str = "std") -> torch.Tensor:
    """Min-max (Shejwalkar & Houmansadr, NDSS 2021).

    Sends ``m − γ·dev`` (m the honest mean, dev the perturbation direction) with the
    largest γ >= 0 such that its distance to every honest update is at most the
    largest distance between two honest updates. Each constraint is quadratic in γ,
    so γ is solved exactly (the paper's halving search approximates it).
    """
    x = _check(honest)
    mean = x.mean(dim=0)
    dev = _deviation(x, mean, perturbation)
    dd = float(dev @ dev)
    if dd == 0.0:
        return mean.to(honest.dtype)
    a = mean - x  # (h, d): m − h_i
    sq = (x * x).sum(dim=1)
    d2_max = float((sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0).max())
    ad = a @ dev
    aa = (a * a).sum(dim=1)
    # ‖a_i − γ dev‖² <= D²  <=>  dd γ² − 2 (a_i·dev) γ + (‖a_i‖² − D²) <= 0
    disc = (ad * ad - dd * (aa - d2_max)).clamp_min(0.0)
    gamma = float(((ad + disc.sqrt()) / dd).min().clamp_min(0.0))
    return (mean - gamma * dev).to(honest.dtype)


def min_sum(honest: torch.Tensor, perturbation: str = "std") -> torch.Tensor:
    """Min-sum (Shejwalkar & Houmansadr, NDSS 2021).

    Sends ``m − γ·dev`` with the largest γ >= 0 such that the sum of its squared
    distances to the honest updates is at most the largest such sum of an honest
    update. Since the deviations from the mean sum to zero, the constraint reads
    ``S0 + h γ² ‖dev‖² <= T``, solved in closed form.
    """
    x = _check(honest)
    h = x.shape[0]
    mean = x.mean(dim=0)
    dev = _deviation(x, mean, perturbation)
    dd = float(dev @ dev)
    if dd == 0.0:
        return mean.to(honest.dtype)
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0)
    budget = float(d2.sum(dim=1).max())
    s0 = float(((x - mean) ** 2).sum())
    gamma = math.sqrt(max(budget - s0, 0.0) / (h * dd))
    return (mean - gamma * dev).to(honest.dtype)
