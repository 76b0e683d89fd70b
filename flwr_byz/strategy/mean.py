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
        See :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy`.
    """

    rule_name = "mean"
