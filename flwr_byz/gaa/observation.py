"""What the GAA policy sees in one round (the paper's state s_t)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Observation:
    """The state s_t = (Δ's, θ_t, f_B(θ_t)) plus derived per-worker features.

    Every field is detached: the state enters the policy as an observation;
    back-propagation runs through the credits and the parameters instead.

    Attributes
    ----------
    node_ids : tuple[int, ...]
        One node id per row of ``updates`` (the trusted server worker, if
        any, is ``TRUSTED_NODE_ID``).
    updates : torch.Tensor
        ``(m, d)`` updates Δ_i received this round.
    theta : torch.Tensor
        ``(d,)`` global parameters θ_t the updates were computed from.
    qv_loss : torch.Tensor
        ``f_B(θ_t)``, 0-d.
    features : torch.Tensor or None
        ``(m, F)`` evidence features (``flwr_byz.gaa.features``), or ``None``
        when the policy does not use them.
    """

    node_ids: tuple[int, ...]
    updates: torch.Tensor
    theta: torch.Tensor
    qv_loss: torch.Tensor
    features: torch.Tensor | None = None
