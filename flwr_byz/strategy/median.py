"""Coordinate-wise median on updates, robust to malformed replies."""

from __future__ import annotations

from .robust_strategy import RobustStrategy


class Median(RobustStrategy):
    """Coordinate-wise median strategy (Flower's ``FedMedian`` on updates).

    For an even number of replies, the mean of the two middle values (numpy's
    convention). ``num_malicious_nodes`` only sets the bound on valid replies.

    Parameters
    ----------
    **kwargs : Any
        See :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy`.
    """

    rule_name = "median"
