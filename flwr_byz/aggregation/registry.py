"""The one registry of aggregation rules.

Everything that lists rules derives from :data:`REGISTRY`: the bounds
(:func:`~flwr_byz.aggregation.bounds.min_nodes`), the strategies' budget and
weighting flags and :data:`flwr_byz.strategy.STRATEGIES`, the app's ``strategy``
run-config key and strategy factory, the experiment grid, and the README's rule
table (``python -m flwr_byz.aggregation.registry`` prints it; a test keeps the
README in step).

Adding a rule is one function and one entry::

    def my_rule(x: torch.Tensor, f: int) -> AggregationResult: ...

    Rule("my-rule", bound=lambda f: 2 * f + 1, bound_text="2f+1", uses_f=True,
         supports_weights=False, description="…",
         aggregate=lambda x, f, weights: my_rule(x, f))

A rule without a hand-written strategy class (``strategy=""``) gets a generated
one (:func:`flwr_byz.strategy.strategy_for`), named after the rule; the app builds
it with ``malicious_fraction = assumed-byzantine-fraction`` when it ``uses_f``.
This module imports no Flower.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .result import AggregationResult
from .sketch import CountSketch

#: ``aggregate(updates, f, weights)``: the rule on an ``(n, d)`` matrix (rules with
#: ``uses_distances`` also take a keyword ``sketch``, a
#: :class:`~flwr_byz.aggregation.sketch.CountSketch` or ``None``).
AggregateFn = Callable[..., AggregationResult]


@dataclass(frozen=True)
class Rule:
    """One aggregation rule.

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
        One line for the README table: what the rule computes, with the paper.
    strategy : str
        Name of its strategy class in :mod:`flwr_byz.strategy`; ``""`` = generated.
    aggregate : AggregateFn or None
        ``(updates, f, weights) -> AggregationResult`` for rules whose strategy
        needs nothing else; ``None`` when the strategy class calls the rule itself
        (extra parameters or server data).
    uses_distances : bool
        Whether the rule decides on pairwise distances from a Gram product (then
        it accepts the opt-in ``sketch``, :mod:`flwr_byz.aggregation.sketch`).
    """

    name: str
    bound: Callable[[int], int]
    bound_text: str
    uses_f: bool
    supports_weights: bool
    description: str
    strategy: str = ""
    aggregate: AggregateFn | None = None
    uses_distances: bool = False


def _mean(x: torch.Tensor, f: int, w: torch.Tensor | None) -> AggregationResult:
    from .mean import mean

    return mean(x, w)


def _faba(
    x: torch.Tensor, f: int, w: torch.Tensor | None, sketch: CountSketch | None = None
) -> AggregationResult:
    from .faba import faba

    return faba(x, f, w, sketch=sketch)


def _krum(
    x: torch.Tensor, f: int, w: torch.Tensor | None, sketch: CountSketch | None = None
) -> AggregationResult:
    from .krum import krum

    return krum(x, f, sketch=sketch)


def _bulyan(
    x: torch.Tensor, f: int, w: torch.Tensor | None, sketch: CountSketch | None = None
) -> AggregationResult:
    from .bulyan import bulyan

    return bulyan(x, f, sketch=sketch)


def _median(x: torch.Tensor, f: int, w: torch.Tensor | None) -> AggregationResult:
    from .coordinatewise import coordinate_median

    return coordinate_median(x)


def _brute(x: torch.Tensor, f: int, w: torch.Tensor | None) -> AggregationResult:
    from .brute_force import brute_force

    return brute_force(x, f)


def _twice_plus_one(f: int) -> int:
    return 2 * f + 1


def _twice_plus_three(f: int) -> int:
    return 2 * f + 3


REGISTRY: tuple[Rule, ...] = (
    Rule(
        "faba",
        _twice_plus_one,
        "2f+1",
        True,
        True,
        "FABA (Xia et al., IJCAI 2019): f times, drop the update farthest from the "
        "mean of the rest; mean of the n − f left",
        "FABA",
        _faba,
        uses_distances=True,
    ),
    Rule(
        "krum",
        _twice_plus_three,
        "2f+3",
        True,
        False,
        "Krum (Blanchard et al., NeurIPS 2017): the update with the smallest sum "
        "of squared distances to its n − f − 2 nearest",
        "Krum",
        _krum,
        uses_distances=True,
    ),
    Rule(
        "multikrum",
        _twice_plus_three,
        "2f+3",
        True,
        True,
        "MultiKrum (Blanchard et al., NeurIPS 2017): mean of the m lowest Krum scores",
        "MultiKrum",
        uses_distances=True,
    ),
    Rule(
        "bulyan",
        lambda f: 4 * f + 3,
        "4f+3",
        True,
        False,
        "Bulyan (El Mhamdi et al., ICML 2018): n − 2f updates by repeated Krum, "
        "then per coordinate the mean of the n − 4f closest to the median",
        "Bulyan",
        _bulyan,
        uses_distances=True,
    ),
    Rule(
        "geomed",
        _twice_plus_one,
        "2f+1",
        True,
        False,
        "GeoMed: the medoid (FABA paper's baseline) or the smoothed-Weiszfeld "
        "geometric median (weighted)",
        "GeoMed",
        uses_distances=True,
    ),
    Rule(
        "median",
        _twice_plus_one,
        "2f+1",
        False,
        False,
        "coordinate-wise median (Yin et al., ICML 2018); numpy's even-n median",
        "Median",
        _median,
    ),
    Rule(
        "trimmed-mean",
        _twice_plus_one,
        "2f+1",
        False,
        False,
        "coordinate-wise trimmed mean (Yin et al., ICML 2018): drop the "
        "floor(βn) largest and smallest per coordinate",
        "TrimmedMean",
    ),
    Rule(
        "brute-force",
        _twice_plus_one,
        "2f+1",
        True,
        False,
        "brute force (FABA paper's baseline): mean of the (n − f)-subset of "
        "smallest diameter",
        "BruteForce",
        _brute,
    ),
    Rule(
        "fltrust",
        lambda f: 1,
        "1",
        False,
        False,
        "FLTrust (Cao et al., NDSS 2021): trust ReLU(cos) to the server's own "
        "update, updates rescaled to its norm",
        "FLTrust",
    ),
    Rule(
        "zeno",
        lambda f: f + 1,
        "f+1",
        True,
        False,
        "Zeno (Xie et al., ICML 2019): mean of the n − b updates with the best "
        "descendant score on the server's data",
        "Zeno",
    ),
    Rule(
        "mean",
        lambda f: 1,
        "1",
        False,
        True,
        "mean of the updates: no defence, with flwr-byz's reply validation",
        "Mean",
        _mean,
    ),
)

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


def readme_table() -> str:
    """The README's rule table, generated from :data:`REGISTRY`."""
    lines = [
        "| `strategy` | class | needs (n valid replies) | uses f | weights | rule |",
        "|---|---|---|---|---|---|",
    ]
    for rule in REGISTRY:
        cls = rule.strategy or "(generated)"
        lines.append(
            f"| `{rule.name}` | `{cls}` | n ≥ {rule.bound_text} | "
            f"{'yes' if rule.uses_f else 'no'} | "
            f"{'yes' if rule.supports_weights else 'no'} | {rule.description} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(readme_table())
