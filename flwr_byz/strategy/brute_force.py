"""Brute-force minimum-diameter subset averaging."""

from __future__ import annotations

from typing import Any

import torch

from flwr_byz.aggregation.result import AggregationResult

from .robust_strategy import RobustStrategy


class BruteForce(RobustStrategy):
    """Brute-force strategy.

    Averages the subset of ``n - f`` updates with the smallest maximum pairwise
    distance. Needs ``n >= 2f + 1``; a round whose ``C(n, f)`` exceeds
    ``max_subsets`` keeps the model unchanged (status ``AGGREGATION_FAILED``).

    Parameters
    ----------
    max_subsets : int (default: 200000)
        Largest number of subsets examined.
    **kwargs : Any
        Every other argument of
        :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy` (Flower's
        ``fraction_train``, ``min_train_nodes``, ..., and
        ``num_malicious_nodes`` / ``malicious_fraction``, ``weighted_by_key``,
        ``server_learning_rate``, ``server_momentum``, ``device``).
    """

    rule_name = "brute-force"
    uses_f = True
    supports_weights = False

    def __init__(self, max_subsets: int = 200_000, **kwargs: Any) -> None:
        if isinstance(max_subsets, bool) or not isinstance(max_subsets, int) or (
                max_subsets < 1):
            raise ValueError(f"max_subsets={max_subsets!r}: allowed values are "
                             "integers >= 1")
        super().__init__(**kwargs)
        self.max_subsets = max_subsets

    def _settings(self) -> list[tuple[str, object]]:
        return [("Max subsets", self.max_subsets)]

    def aggregate_updates(self, server_round: int, updates: torch.Tensor,
                          node_ids: list[int], weights: torch.Tensor | None, f: int,
                          global_flat: torch.Tensor) -> AggregationResult:
        """Aggregate with :func:`flwr_byz.aggregation.brute_force`."""
        from flwr_byz.aggregation import brute_force

        return brute_force(updates, f, max_subsets=self.max_subsets)
