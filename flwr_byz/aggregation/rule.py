"""What a rule's module declares about it: :class:`Rule` and its :class:`Param` s.

Each rule module ends with its entry (``RULE = Rule(...)``, or ``RULES`` for a
module with several); :mod:`flwr_byz.aggregation.registry` only collects them.
Everything else that lists rules derives from the entries: the strategy classes,
the run-config keys with their checks and defaults, the docs' rule table and the
experiment grid. This module imports no rule and no Flower.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from flwr_byz.validation import Check, integer, require

from .result import AggregationResult
from .round_input import RoundInput
from .sketch import CountSketch
from .validation import check_f, check_updates

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


def _parse_bound(text: str) -> tuple[int, int]:
    """``"2f+3"`` -> ``(2, 3)``, ``"f+1"`` -> ``(1, 1)``, ``"1"`` -> ``(0, 1)``."""
    match = re.fullmatch(r"(?:(\d*)f\+)?(\d+)", text)
    if match is None:
        raise ValueError(f"bound {text!r}: allowed forms are 'af+b' and 'b'")
    slope, offset = match.groups()
    return (0 if slope is None else int(slope or 1)), int(offset)


def _first_paragraph(function: Callable[..., Any]) -> str:
    doc = inspect.getdoc(function) or ""
    return " ".join(doc.split("\n\n")[0].split()).rstrip(".")


@dataclass(frozen=True)
class Rule:
    """One aggregation rule, declared in its own module.

    Attributes
    ----------
    name : str
        Run-config name (``strategy`` key) and ``RobustStrategy.rule_name``.
    bound_text : str
        The smallest number of valid updates with which the rule tolerates
        ``f``, as ``"af+b"`` or ``"b"`` (e.g. ``"2f+1"``): :meth:`min_nodes`.
    function : Callable
        The pure rule function, e.g. :func:`~flwr_byz.aggregation.krum.krum`.
        Unless ``aggregate`` is given, :meth:`decide` calls it as
        ``function(updates[, f], [weights=…,] [sketch=…,] **params)``, by the
        flags below.
    aggregate : AggregateFn or None
        ``(round_input, *, sketch=None, **params) -> AggregationResult`` where
        the generic call does not fit (a parameter to translate, a variant).
    uses_f : bool
        Whether ``f`` changes what the rule does (then a budget is required).
    supports_weights : bool
        Whether the rule accepts per-update weights (``weighted_aggregation``).
    uses_distances : bool
        Whether the rule decides on pairwise distances from a Gram product (then
        it accepts the opt-in ``sketch``, :mod:`flwr_byz.aggregation.sketch`).
    needs_server_data : bool
        The rule needs more than a round's updates (FLTrust's server update,
        Zeno's loss on server data): its strategy class calls ``function``.
    params : tuple[Param, ...]
        The rule's own parameters.
    description : str
        One line for the docs' table; by default the first paragraph of
        ``function``'s docstring.
    """

    name: str
    bound_text: str
    function: Callable[..., AggregationResult]
    aggregate: AggregateFn | None = None
    uses_f: bool = False
    supports_weights: bool = False
    uses_distances: bool = False
    needs_server_data: bool = False
    params: tuple[Param, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        _parse_bound(self.bound_text)
        if not self.description:
            object.__setattr__(self, "description", _first_paragraph(self.function))

    def bound(self, f: int) -> int:
        """``a·f + b`` of :attr:`bound_text`, without checking ``f``."""
        slope, offset = _parse_bound(self.bound_text)
        return slope * f + offset

    def min_nodes(self, f: int) -> int:
        """Smallest number of rows with which the rule tolerates ``f`` bad rows."""
        require("f", f, integer(0), owner="min_nodes")
        return self.bound(f)

    def require_rows(self, n: int, f: int) -> None:
        """Raise ``ValueError`` naming n, f and the bound when ``n`` is too small."""
        needed = self.min_nodes(f)
        if n < needed:
            raise ValueError(
                f"{self.name} needs n >= {self.bound_text} = {needed} rows to "
                f"tolerate f = {f} Byzantine rows, got n = {n}"
            )

    def check_input(self, x: torch.Tensor, f: int, owner: str = "") -> int:
        """Check an ``(n, d)`` update matrix and a budget ``f`` for this rule.

        Returns ``n``; raises ``ValueError`` (naming ``owner``, by default the
        rule) for a matrix that is not a floating ``(n, d)`` tensor, a budget
        that is not an integer ``>= 0``, or too few rows for ``f``.
        """
        n, _ = check_updates(x, owner or self.name)
        self.require_rows(n, check_f(f, owner or self.name))
        return n

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

    def decide(
        self,
        round_input: RoundInput,
        *,
        sketch: CountSketch | None = None,
        **params: Any,
    ) -> AggregationResult:
        """The rule on one round's updates (``TypeError`` for server-data rules)."""
        if self.needs_server_data:
            raise TypeError(
                f"rule {self.name!r} needs the server's data: its strategy class "
                "calls it, not the registry"
            )
        if self.aggregate is not None:
            return self.aggregate(round_input, sketch=sketch, **params)
        args = (
            (round_input.updates, round_input.f)
            if self.uses_f
            else (round_input.updates,)
        )
        if self.supports_weights:
            params["weights"] = round_input.weights
        if self.uses_distances:
            params["sketch"] = sketch
        return self.function(*args, **params)
