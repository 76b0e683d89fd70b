"""Brute-force minimum-diameter subset averaging."""

from __future__ import annotations

from typing import Any

from flwr_byz.validation import integer, require

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
        See :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy`.
    """

    rule_name = "brute-force"

    def __init__(self, max_subsets: int = 200_000, **kwargs: Any) -> None:
        require("max_subsets", max_subsets, integer(1))
        super().__init__(**kwargs)
        self.max_subsets = max_subsets

    def _settings(self) -> list[tuple[str, object]]:
        return [("Max subsets", self.max_subsets)]
