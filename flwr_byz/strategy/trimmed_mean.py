"""Coordinate-wise trimmed mean on updates, robust to malformed replies."""

from __future__ import annotations

from typing import Any

import torch

from flwr_byz.aggregation.result import AggregationResult

from .robust_strategy import RobustStrategy


class TrimmedMean(RobustStrategy):
    """Coordinate-wise trimmed mean strategy (Flower's ``FedTrimmedAvg``).

    Parameters
    ----------
    beta : float (default: 0.2)
        Per coordinate, the ``floor(beta * n)`` largest and smallest values are
        dropped before averaging; ``0 <= beta < 0.5``.
    **kwargs : Any
        See :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy`.
    """

    rule_name = "trimmed-mean"

    def __init__(self, beta: float = 0.2, **kwargs: Any) -> None:
        if (
            isinstance(beta, bool)
            or not isinstance(beta, int | float)
            or not 0.0 <= beta < 0.5
        ):
            raise ValueError(f"beta={beta!r}: allowed values are numbers in [0, 0.5)")
        super().__init__(**kwargs)
        self.beta = float(beta)

    def _settings(self) -> list[tuple[str, object]]:
        return [("beta", self.beta)]

    def aggregate_updates(
        self,
        server_round: int,
        updates: torch.Tensor,
        node_ids: list[int],
        weights: torch.Tensor | None,
        f: int,
        global_flat: torch.Tensor,
    ) -> AggregationResult:
        """Aggregate with :func:`flwr_byz.aggregation.trimmed_mean`."""
        from flwr_byz.aggregation import trimmed_mean

        return trimmed_mean(updates, self.beta)
