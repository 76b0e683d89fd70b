"""MultiKrum [Blanchard et al., 2017] on updates, robust to malformed replies."""

from __future__ import annotations

from typing import Any

from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.round_input import RoundInput
from flwr_byz.validation import integer, require

from .robust_strategy import RobustStrategy


class MultiKrum(RobustStrategy):
    """MultiKrum [Blanchard et al., 2017] strategy.

    Moves the model by the mean of the ``num_nodes_to_select`` updates with
    the lowest Krum scores. Needs ``n >= 2f + 3`` valid replies.

    Parameters
    ----------
    num_nodes_to_select : Optional[int] (default: None)
        Number ``m`` of updates averaged; ``None`` means ``n - f`` (the
        paper's choice; Flower's default of 1 is plain Krum). Capped at the
        number of valid replies.
    **kwargs : Any
        See :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy`.
    """

    rule_name = "multikrum"

    def __init__(self, num_nodes_to_select: int | None = None, **kwargs: Any) -> None:
        require("num_nodes_to_select", num_nodes_to_select, integer(1, optional=True))
        super().__init__(**kwargs)
        self.num_nodes_to_select = num_nodes_to_select

    def _settings(self) -> list[tuple[str, object]]:
        return [("Number of nodes to select", self.num_nodes_to_select or "n - f")]

    def aggregate_updates(self, round_input: RoundInput) -> AggregationResult:
        """Aggregate with :func:`flwr_byz.aggregation.multikrum`."""
        from flwr_byz.aggregation import multikrum

        m = self.num_nodes_to_select
        if m is not None:
            m = min(m, round_input.n)
        x, f, weights = round_input.updates, round_input.f, round_input.weights
        return multikrum(x, f, m, weights, sketch=self.sketch)
