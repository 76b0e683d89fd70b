"""What a rule's module declares about it: :class:`Rule` and its :class:`Param` s.

Each rule module ends with its entry (``RULE = Rule(...)``, or ``RULES`` for a
module with several); :mod:`flwr_byz.aggregation.registry` only collects them.
Everything else that lists rules derives from the entries: the strategy classes,
the run-config keys with their checks and defaults, the docs' rule table and the
experiment grid. This module imports no rule and no Flower.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flwr_byz.validation import Check, integer, require

from .result import AggregationResult
from .round_input import RoundInput

#: ``aggregate(round_input, *, sketch=None, **params)``: the rule on one round.
AggregateFn = Callable[..., AggregationResult]


@dataclass(frozen=True)
class Param:
    """One parameter of a rule, beside the budget ``f``.

    Attributes
    ----------
    name : str
        Keyword of the strategy's constructor and of the rule's ``aggregate``.
    default : Any
        Value when not given.
    check : Check
        :mod:`flwr_byz.validation` check of a value.
    help : str
        One line for the docs and the run-config error messages.
    config_key : str or None
        Run-config key; ``""`` means ``"<rule>-<name>"`` (underscores as
        hyphens); ``None`` means the constructor only (not in the run config).
    """

    name: str
    default: Any
    check: Check
    help: str
    config_key: str | None = ""


@dataclass(frozen=True)
class Rule:
    """One aggregation rule, declared in its own module.

    Attributes
    ----------
    name : str
        Run-config name (``strategy`` key) and ``RobustStrategy.rule_name``.
    bound : Callable[[int], int]
        Smallest number of valid updates with which the rule tolerates ``f``.
    bound_text : str
        The bound as text, e.g. ``"2f+1"``.
    uses_f : bool
        Whether ``f`` changes what the rule does (then a budget is required).
    supports_weights : bool
        Whether the rule accepts per-update weights (``weighted_aggregation``).
    description : str
        One line for the docs' table: what the rule computes, with the paper.
    function : Callable
        The pure rule function (its own signature), e.g.
        :func:`~flwr_byz.aggregation.krum.krum`.
    aggregate : AggregateFn or None
        ``(round_input, *, sketch=None, **params) -> AggregationResult``;
        ``None`` for rules that need more than a round's updates (the server's
        data: FLTrust, Zeno), whose strategy class calls ``function`` itself.
    uses_distances : bool
        Whether the rule decides on pairwise distances from a Gram product (then
        it accepts the opt-in ``sketch``, :mod:`flwr_byz.aggregation.sketch`).
    params : tuple[Param, ...]
        The rule's own parameters.
    """

    name: str
    bound: Callable[[int], int]
    bound_text: str
    uses_f: bool
    supports_weights: bool
    description: str
    function: Callable[..., AggregationResult]
    aggregate: AggregateFn | None = None
    uses_distances: bool = False
    params: tuple[Param, ...] = ()

    def min_nodes(self, f: int) -> int:
        """Smallest number of rows with which the rule tolerates ``f`` bad rows."""
        require("f", f, integer(0), owner="min_nodes")
        return int(self.bound(f))

    def require_rows(self, n: int, f: int) -> None:
        """Raise ``ValueError`` naming n, f and the bound when ``n`` is too small."""
        needed = self.min_nodes(f)
        if n < needed:
            raise ValueError(
                f"{self.name} needs n >= {self.bound_text} = {needed} rows to "
                f"tolerate f = {f} Byzantine rows, got n = {n}"
            )

    def config_key(self, param: Param) -> str | None:
        """The run-config key of ``param`` (``None``: constructor only)."""
        if param.config_key is None or param.config_key:
            return param.config_key
        return f"{self.name}-{param.name.replace('_', '-')}"

    def resolve_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every parameter's value: ``given`` where present, else its default.

        Raises ``ValueError`` (``"name=value: allowed values are …"``) for a value
        its check refuses.
        """
        return {
            p.name: require(p.name, given.get(p.name, p.default), p.check)
            for p in self.params
        }

    def decide(self, round_input: RoundInput, **kwargs: Any) -> AggregationResult:
        """Run ``aggregate`` on ``round_input`` (``TypeError`` when it has none)."""
        if self.aggregate is None:
            raise TypeError(
                f"rule {self.name!r} needs its strategy class (server data); it has "
                "no aggregate of a round's updates alone"
            )
        return self.aggregate(round_input, **kwargs)
