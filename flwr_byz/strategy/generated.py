"""Strategy classes made from a rule's registry entry alone."""

from __future__ import annotations

from typing import Any, ClassVar

from flwr_byz.aggregation.rule import Rule

from .robust_strategy import RobustStrategy


class RuleStrategy(RobustStrategy):
    """A strategy whose rule needs nothing but its registry entry.

    Takes the entry's own parameters (:attr:`Rule.params`) as keywords, checks
    them with the entry's checks, and aggregates with the entry's ``aggregate``;
    every other keyword is :class:`RobustStrategy`'s.
    """

    rule: ClassVar[Rule]

    def __init__(self, **kwargs: Any) -> None:
        own = {p.name: kwargs.pop(p.name) for p in self.rule.params if p.name in kwargs}
        self.rule_params = self.rule.resolve_params(own)
        super().__init__(**kwargs)

    def _settings(self) -> list[tuple[str, object]]:
        return list(self.rule_params.items())


def generated_strategy(rule: Rule) -> type[RuleStrategy]:
    """A :class:`RuleStrategy` subclass for ``rule``, named after it."""
    name = "".join(part.capitalize() for part in rule.name.split("-"))
    params = "".join(
        f"\n{p.name} : default {p.default!r}\n    {p.help}." for p in rule.params
    )
    doc = (
        f"{rule.description}.\n\nNeeds n >= {rule.bound_text} valid replies.\n\n"
        f"Parameters\n----------{params}\n**kwargs : Any\n"
        "    See :class:`~flwr_byz.strategy.robust_strategy.RobustStrategy`."
    )
    return type(
        name,
        (RuleStrategy,),
        {"rule": rule, "rule_name": rule.name, "__doc__": doc, "__module__": __name__},
    )
