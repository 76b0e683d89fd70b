"""Adaptive fault (GAA §6.3): gradient of ``ℓ(θ, D0) − a · ℓ(θ, D1)``.

D0 is what the attacker knows of the server's quasi-validation set (descending on it
tempts a QV-based defence into trusting the node); D1 is its own training data
(ascending on it damages the model). The papers' a is 10.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


def adaptive_fault_gradient(
    model: nn.Module,
    d0: tuple[torch.Tensor, torch.Tensor],
    d1: tuple[torch.Tensor, torch.Tensor],
    alpha: float = 10.0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> list[torch.Tensor]:
    """``∇θ [ℓ(θ, D0) − alpha · ℓ(θ, D1)]`` at the model's current weights.

    Parameters
    ----------
    model : nn.Module
        The model at the global weights; it is not modified (gradients are returned,
        ``.grad`` fields are left untouched).
    d0, d1 : tuple of (features, labels)
        The attacker's guess of the QV set, and its own data.
    alpha : float
        Weight of the loss the attacker ascends.
    loss_fn : callable
        Mean loss over a batch (cross entropy by default).

    Returns
    -------
    list of torch.Tensor
        One gradient per trainable parameter, in ``model.parameters()`` order. The
        attacker sends the update ``−λ ·`` this gradient.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    objective = loss_fn(model(d0[0]), d0[1]) - alpha * loss_fn(model(d1[0]), d1[1])
    return list(torch.autograd.grad(objective, params))
