"""Bulyan [El Mhamdi et al., 2018] on updates, robust to malformed replies."""

from __future__ import annotations

import torch

from flwr_byz.aggregation.result import AggregationResult

from .robust_strategy import RobustStrategy


class Bulyan(RobustStrategy):
    """Bulyan [El Mhamdi et al., 2018] strategy.

    Chooses ``n - 2f`` updates by repeated Krum, then per coordinate averages
    the ``n - 4f`` chosen values closest to their median. Needs
    ``n >= 4f + 3`` valid replies.

    Parameters
    ----------
    **kwargs : Any
        Every other argument of
        :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy` (Flower's
        ``fraction_train``, ``min_train_nodes``, ..., and
        ``num_malicious_nodes`` / ``malicious_fraction``, ``weighted_by_key``,
        ``server_learning_rate``, ``server_momentum``, ``device``).
    """

    rule_name = "bulyan"
    uses_f = True
    supports_weights = False

    def aggregate_updates(self, server_round: int, updates: torch.Tensor,
                          node_ids: list[int], weights: torch.Tensor | None, f: int,
                          global_flat: torch.Tensor) -> AggregationResult:
        """Aggregate with :func:`flwr_byz.aggregation.bulyan`."""
        from flwr_byz.aggregation import bulyan

        return bulyan(updates, f)
