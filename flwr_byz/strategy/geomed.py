"""Geometric median: the paper's medoid or a smoothed-Weiszfeld median."""

from __future__ import annotations

from typing import Any

from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.round_input import RoundInput
from flwr_byz.validation import integer, number, one_of, require

from .robust_strategy import RobustStrategy

_METHODS = ("medoid", "weiszfeld")


class GeoMed(RobustStrategy):
    """Geometric-median strategy.

    Parameters
    ----------
    method : str (default: "medoid")
        ``"medoid"``: the update minimising the sum of distances to the others
        (the GAA paper's GeoMed); ``"weiszfeld"``: the geometric median by
        smoothed Weiszfeld iterations (supports ``weighted_aggregation``).
    eps : float (default: 1e-8)
        Weiszfeld smoothing.
    max_iter : int (default: 100)
        Weiszfeld iteration cap.
    tol : float (default: 1e-7)
        Weiszfeld relative stopping tolerance.
    **kwargs : Any
        See :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy`.

    Notes
    -----
    Needs ``n >= 2f + 1`` valid replies.
    """

    rule_name = "geomed"

    def __init__(
        self,
        method: str = "medoid",
        eps: float = 1e-8,
        max_iter: int = 100,
        tol: float = 1e-7,
        **kwargs: Any,
    ) -> None:
        require("method", method, one_of(_METHODS))
        require("max_iter", max_iter, integer(1))
        require("eps", eps, number(0.0))
        require("tol", tol, number(0.0))
        # Only the Weiszfeld median is a weighted estimator.
        self.supports_weights = method == "weiszfeld"
        super().__init__(**kwargs)
        self.method = method
        self.eps = float(eps)
        self.max_iter = max_iter
        self.tol = float(tol)

    def _settings(self) -> list[tuple[str, object]]:
        if self.method == "medoid":
            return [("Method", self.method)]
        return [
            ("Method", self.method),
            ("eps", self.eps),
            ("max_iter", self.max_iter),
            ("tol", self.tol),
        ]

    def aggregate_updates(self, round_input: RoundInput) -> AggregationResult:
        """Aggregate with :func:`flwr_byz.aggregation.geomed_medoid` or
        :func:`flwr_byz.aggregation.geometric_median`."""
        from flwr_byz.aggregation import geomed_medoid, geometric_median

        x, f = round_input.updates, round_input.f
        if self.method == "medoid":
            return geomed_medoid(x, f, sketch=self.sketch)
        return geometric_median(
            x,
            f,
            weights=round_input.weights,
            eps=self.eps,
            max_iter=self.max_iter,
            tol=self.tol,
            sketch=self.sketch,
        )
