"""Coordinate-wise trimmed mean on updates, robust to malformed replies."""

from __future__ import annotations

from typing import Any

from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.round_input import RoundInput
from flwr_byz.validation import number, require

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
        require("beta", beta, number(0.0, 0.5, high_open=True))
        super().__init__(**kwargs)
        self.beta = float(beta)

    def _settings(self) -> list[tuple[str, object]]:
        return [("beta", self.beta)]

    def aggregate_updates(self, round_input: RoundInput) -> AggregationResult:
        """Aggregate with :func:`flwr_byz.aggregation.trimmed_mean`."""
        from flwr_byz.aggregation import trimmed_mean

        return trimmed_mean(round_input.updates, self.beta)
