"""The rule registry: collects the entry every rule module declares.

A rule lives in one module of :mod:`flwr_byz.aggregation`: its pure function and,
at the end, its :class:`~flwr_byz.aggregation.rule.Rule` entry (``RULE``, or
``RULES`` for a module with several). This module imports every module of the
package and collects those entries; nothing here lists a rule by hand.

Everything that lists rules derives from :data:`REGISTRY`: the bounds
(:func:`min_nodes`), the strategies' flags and :data:`flwr_byz.strategy.STRATEGIES`
(a generated class for a rule without a hand-written one), the app's ``strategy``
run-config key and each rule parameter's key, the experiment grid, and the docs'
rule table (:func:`rules_table`; ``python -m flwr_byz.aggregation.registry``
prints it). This module imports no Flower.
"""

from __future__ import annotations

import importlib
import pkgutil

from .rule import Param, Rule

__all__ = ["REGISTRY", "RULE_BY_NAME", "Param", "Rule", "get_rule", "min_nodes"]


def _collect() -> tuple[Rule, ...]:
    package = __package__  # also under ``python -m flwr_byz.aggregation.registry``
    here = importlib.import_module(package)
    found: list[Rule] = []
    for info in sorted(pkgutil.iter_modules(here.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package}.{info.name}")
        single = getattr(module, "RULE", None)
        several = getattr(module, "RULES", ())
        found.extend(r for r in (single, *several) if isinstance(r, Rule))
    names = [rule.name for rule in found]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise RuntimeError(f"rules declared twice: {', '.join(twice)}")
    return tuple(sorted(found, key=lambda rule: rule.name))


#: Every rule declared in a module of :mod:`flwr_byz.aggregation`, by name.
REGISTRY: tuple[Rule, ...] = _collect()

#: Rule name -> :class:`Rule`.
RULE_BY_NAME: dict[str, Rule] = {rule.name: rule for rule in REGISTRY}


def get_rule(name: str) -> Rule:
    """The registered rule ``name``; ``ValueError`` naming the known ones."""
    try:
        return RULE_BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown rule {name!r}; allowed: {', '.join(sorted(RULE_BY_NAME))}"
        ) from None


def min_nodes(rule: str, f: int) -> int:
    """Smallest number of rows ``n`` with which ``rule`` tolerates ``f`` Byzantine rows.

    Parameters
    ----------
    rule : str
        A rule of :data:`REGISTRY` (its ``bound``).
    f : int
        Number of Byzantine rows, >= 0.

    Returns
    -------
    int
        ``1`` for mean and FLTrust, ``f+1`` for Zeno (``b = f``), ``2f+1`` for
        FABA (n > 2f), GeoMed, median, trimmed mean and brute force, ``2f+3`` for
        Krum and MultiKrum, ``4f+3`` for Bulyan.
    """
    if rule not in RULE_BY_NAME:
        raise ValueError(
            f"min_nodes: unknown rule {rule!r}; allowed: "
            f"{', '.join(sorted(RULE_BY_NAME))}"
        )
    return RULE_BY_NAME[rule].min_nodes(f)


def _param_text(rule: Rule) -> str:
    parts = []
    for param in rule.params:
        key = rule.config_key(param)
        where = f" (`{key}`)" if key else ""
        parts.append(f"`{param.name}`{where} = `{param.default!r}`")
    return ", ".join(parts) or "—"


def rules_table() -> str:
    """The docs' rule table, generated from :data:`REGISTRY`."""
    lines = [
        "| `strategy` | needs (n valid replies) | uses f | weights | parameters "
        "| rule |",
        "|---|---|---|---|---|---|",
    ]
    for rule in REGISTRY:
        lines.append(
            f"| `{rule.name}` | n ≥ {rule.bound_text} | "
            f"{'yes' if rule.uses_f else 'no'} | "
            f"{'yes' if rule.supports_weights else 'no'} | {_param_text(rule)} | "
            f"{rule.description} |"
        )
    return "\n".join(lines)


def rule_parameters_table() -> str:
    """The docs' table of the rules' run-config keys, from :data:`REGISTRY`."""
    lines = [
        "| key | main job | strategy | allowed values / meaning |",
        "|---|---|---|---|",
    ]
    for rule in REGISTRY:
        for param in rule.params:
            key = rule.config_key(param)
            if key is None or key == "assumed-byzantine-fraction":
                continue
            allowed = param.check(object()) or ""
            lines.append(
                f"| `{key}` | `{param.default!r}` | `{rule.name}` | "
                f"{allowed}: {param.help} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(rules_table())
