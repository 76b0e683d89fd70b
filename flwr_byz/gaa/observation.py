"""What the GAA policy sees in one round (the paper's state s_t)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from flwr_byz.aggregation.distances import sample_columns


def sample_cosines(updates: torch.Tensor) -> torch.Tensor:
    """``(m, m)`` float64 cosines between the rows of ``updates``, read on the
    aggregation's column sample (:func:`sample_columns`) after each row is
    scaled by its largest magnitude, so no update can overflow them."""
    sample = sample_columns(updates.detach()).double()
    sample = sample / sample.abs().amax(dim=1, keepdim=True).clamp(min=1e-300)
    norms = sample.norm(dim=1).clamp(min=1e-300)
    return (sample @ sample.T) / (norms[:, None] * norms[None, :])


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

    @cached_property
    def update_cosines(self) -> torch.Tensor:
        """:func:`sample_cosines` of ``updates``, computed once per round (the
        collusion discount reads them for the references and the aggregate)."""
        return sample_cosines(self.updates)
