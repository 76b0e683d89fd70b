"""Krum [Blanchard et al., 2017] on updates, robust to malformed replies."""

from __future__ import annotations

import torch

from flwr_byz.aggregation.result import AggregationResult

from .robust_strategy import RobustStrategy


class Krum(RobustStrategy):
    """Krum [Blanchard et al., 2017] strategy.

    Scores every update by the sum of squared L2 distances to its n - f - 2
    nearest others and moves the model by the lowest-scoring update. Needs
    n >= 2f + 3 valid replies. Unlike Flower's ``Krum``, replies are
    validated one by one and never weighted by self-reported sizes; the
    round's MetricRecord carries every node's score (``"scores"``).

    Parameters
    ----------
    **kwargs : Any
        Every other argument of
        :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy` (Flower's
        ``fraction_train``, ``min_train_nodes``, ..., and
        ``num_malicious_nodes`` / ``malicious_fraction``, ``weighted_by_key``,
        ``server_learning_rate``, ``server_momentum``, ``device``).
    """

    rule_name = "krum"
    uses_f = True
    supports_weights = False

    def aggregate_updates(self, server_round: int, updates: torch.Tensor,
                          node_ids: list[int], weights: torch.Tensor | None, f: int,
                          global_flat: torch.Tensor) -> AggregationResult:
        """Aggregate with :func:`flwr_byz.aggregation.krum`."""
        from flwr_byz.aggregation import krum

        return krum(updates, f)
