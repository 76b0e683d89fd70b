"""Plain mean of validated updates (FedAvg on updates, no Byzantine defence)."""

from __future__ import annotations

from .robust_strategy import RobustStrategy


class Mean(RobustStrategy):
    """Mean strategy: the no-defence baseline with flwr-byz's reply validation.

    Equal to FedAvg with ``server_learning_rate=1`` and
    ``weighted_aggregation=True`` on well-formed replies.

    Parameters
    ----------
    **kwargs : Any
        Every other argument of
        :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy` (Flower's
        ``fraction_train``, ``min_train_nodes``, ..., and
        ``num_malicious_nodes`` / ``malicious_fraction``, ``weighted_by_key``,
        ``server_learning_rate``, ``server_momentum``, ``device``).
    """

    rule_name = "mean"
