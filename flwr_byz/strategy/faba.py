"""FABA: Fast Aggregation against Byzantine Attacks [Xia et al., 2019]."""

from __future__ import annotations

import torch

from flwr_byz.aggregation.result import AggregationResult

from .robust_strategy import RobustStrategy


class FABA(RobustStrategy):
    """FABA [Xia et al., 2019] strategy.

    Repeats f times: remove the update farthest (L2) from the mean of the
    remaining ones; the new model moves by the mean of the n - f left.
    Needs n > 2f valid replies. The round's MetricRecord lists the removed
    node ids in removal order ("removed-node-ids").

    Parameters
    ----------
    **kwargs : Any
        Every other argument of
        :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy` (Flower's
        ``fraction_train``, ``min_train_nodes``, ..., and
        ``num_malicious_nodes`` / ``malicious_fraction``, ``weighted_by_key``,
        ``server_learning_rate``, ``server_momentum``, ``device``).

    Examples
    --------
    Replace ``FedAvg(...)`` in a Message-API ServerApp::

        strategy = FABA(num_malicious_nodes=3)
        result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=10)
        result.train_metrics_clientapp[10]["removed-node-ids"]
    """

    rule_name = "faba"
    uses_f = True

    def aggregate_updates(self, server_round: int, updates: torch.Tensor,
                          node_ids: list[int], weights: torch.Tensor | None, f: int,
                          global_flat: torch.Tensor) -> AggregationResult:
        """Aggregate with :func:`flwr_byz.aggregation.faba`."""
        from flwr_byz.aggregation import faba

        return faba(updates, f, weights)
