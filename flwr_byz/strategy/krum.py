"""Krum [Blanchard et al., 2017] on updates, robust to malformed replies."""

from __future__ import annotations

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
        See :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy`.
    """

    rule_name = "krum"
