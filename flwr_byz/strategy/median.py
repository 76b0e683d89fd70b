"""Coordinate-wise median on updates, robust to malformed replies."""

from __future__ import annotations

import torch

from flwr_byz.aggregation.result import AggregationResult

from .robust_strategy import RobustStrategy


class Median(RobustStrategy):
    """Coordinate-wise median strategy (Flower's ``FedMedian`` on updates).

    For an even number of replies, the mean of the two middle values (numpy's
    convention). ``num_malicious_nodes`` only sets the bound on valid replies.

    Parameters
    ----------
    **kwargs : Any
        Every other argument of
        :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy` (Flower's
        ``fraction_train``, ``min_train_nodes``, ..., and
        ``num_malicious_nodes`` / ``malicious_fraction``, ``weighted_by_key``,
        ``server_learning_rate``, ``server_momentum``, ``device``).
    """

    rule_name = "median"
    supports_weights = False

    def aggregate_updates(self, server_round: int, updates: torch.Tensor,
                          node_ids: list[int], weights: torch.Tensor | None, f: int,
                          global_flat: torch.Tensor) -> AggregationResult:
        """Aggregate with :func:`flwr_byz.aggregation.coordinate_median`."""
        from flwr_byz.aggregation import coordinate_median

        return coordinate_median(updates)
