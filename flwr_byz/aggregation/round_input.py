"""What a rule decides on: one round's valid updates and the facts around them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flwr_byz.records import ModelLayout


@dataclass(frozen=True)
class RoundInput:
    """One round's input to an aggregation rule.

    Built once per round by the round core after reply validation; every rule
    reads what it needs from it and nothing else.

    Attributes
    ----------
    server_round : int
        The round.
    updates : torch.Tensor
        The ``(n, d)`` float32 matrix of valid updates (``theta_k - theta``), one
        row per valid reply, in ``node_ids`` order.
    node_ids : Sequence[int]
        The replying node of each row.
    weights : torch.Tensor or None
        Per-row weights (e.g. ``num-examples``) when weighting is on.
    f : int
        The Byzantine budget resolved for these ``n`` rows.
    global_flat : torch.Tensor
        The flat model that was sent this round (``d`` values), for rules that
        evaluate candidates on server data.
    layout : ModelLayout or None
        Keys, shapes and flat offsets of the model sent this round: which
        array each column of ``updates`` belongs to (``None`` where the caller
        has no ArrayRecord, e.g. a rule called on a bare matrix).
    """

    server_round: int
    updates: torch.Tensor
    node_ids: Sequence[int]
    weights: torch.Tensor | None
    f: int
    global_flat: torch.Tensor
    layout: ModelLayout | None = None

    @property
    def n(self) -> int:
        """Number of valid updates."""
        return int(self.updates.shape[0])
