"""Argument checks shared by the aggregation rules.

Every message names the rule, the argument, the bad value and what is allowed, so a
strategy can pass it on unchanged.
"""

from __future__ import annotations

import torch

from flwr_byz.validation import integer, number, require


def check_updates(x: torch.Tensor, rule: str) -> tuple[int, int]:
    """Return ``(n, d)`` of a non-empty 2-D floating tensor, else raise ValueError."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{rule}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(
            f"{rule}: x must be a non-empty (n, d) matrix of updates, "
            f"got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{rule}: x must have a floating dtype, got {x.dtype}")
    return int(x.shape[0]), int(x.shape[1])


def check_f(f: int, rule: str) -> int:
    """Return ``f`` if it is a non-negative integer, else raise ``ValueError``."""
    return require("f", f, integer(0), owner=rule)


def check_weights(
    weights: torch.Tensor | None, n: int, rule: str
) -> torch.Tensor | None:
    """Return the weights as a CPU float64 ``(n,)`` tensor (not normalised), or None.

    Weights must be finite, non-negative and not all zero.
    """
    if weights is None:
        return None
    w = torch.as_tensor(weights).detach().to(device="cpu", dtype=torch.float64)
    if w.shape != (n,):
        raise ValueError(
            f"{rule}: weights must have shape ({n},) (one per row), "
            f"got {tuple(w.shape)}"
        )
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{rule}: weights must be finite and >= 0, got {w.tolist()}")
    if float(w.sum()) <= 0.0:
        raise ValueError(f"{rule}: weights must not all be zero, got {w.tolist()}")
    return w


def normalised(coeffs: torch.Tensor, rule: str, what: str) -> torch.Tensor:
    """Scale non-negative coefficients to sum to one; refuse an all-zero vector."""
    total = float(coeffs.sum())
    if total <= 0.0:
        raise ValueError(
            f"{rule}: the weights of the {what} rows sum to zero; give at least one "
            "of them a positive weight"
        )
    return coeffs / total


def finite_non_negative(name: str, value: float, *, positive: bool = False) -> float:
    """``value`` as a float if it is a finite number ``>= 0`` (``> 0`` when
    ``positive``); otherwise a ValueError that names ``name`` and what is allowed.
    Booleans are refused (``True`` is not a number of seconds or a weight)."""
    return float(require(name, value, number(0.0, low_open=positive)))
