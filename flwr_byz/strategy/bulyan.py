"""Bulyan [El Mhamdi et al., 2018] on updates, robust to malformed replies."""

from __future__ import annotations

from .robust_strategy import RobustStrategy


class Bulyan(RobustStrategy):
    """Bulyan [El Mhamdi et al., 2018] strategy.

    Chooses ``n - 2f`` updates by repeated Krum, then per coordinate averages
    the ``n - 4f`` chosen values closest to their median. Needs
    ``n >= 4f + 3`` valid replies.

    Parameters
    ----------
    **kwargs : Any
        See :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy`.
    """

    rule_name = "bulyan"
