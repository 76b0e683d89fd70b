"""Geometric median: the paper's medoid or a smoothed-Weiszfeld median."""

from __future__ import annotations

from typing import Any

import torch

from flwr_byz.aggregation.result import AggregationResult

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
        if method not in _METHODS:
            raise ValueError(f"method={method!r}: allowed values are {_METHODS}")
        if not (isinstance(max_iter, int) and max_iter >= 1):
            raise ValueError(f"max_iter={max_iter!r}: allowed values are ints >= 1")
        if not (isinstance(eps, int | float) and eps >= 0):
            raise ValueError(f"eps={eps!r}: allowed values are numbers >= 0")
        if not (isinstance(tol, int | float) and tol >= 0):
            raise ValueError(f"tol={tol!r}: allowed values are numbers >= 0")
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

    def aggregate_updates(
        self,
        server_round: int,
        updates: torch.Tensor,
        node_ids: list[int],
        weights: torch.Tensor | None,
        f: int,
        global_flat: torch.Tensor,
    ) -> AggregationResult:
        """Aggregate with :func:`flwr_byz.aggregation.geomed_medoid` or
        :func:`flwr_byz.aggregation.geometric_median`."""
        from flwr_byz.aggregation import geomed_medoid, geometric_median

        if self.method == "medoid":
            return geomed_medoid(updates, f, sketch=self.sketch)
        return geometric_median(
            updates,
            f,
            weights=weights,
            eps=self.eps,
            max_iter=self.max_iter,
            tol=self.tol,
            sketch=self.sketch,
        )
