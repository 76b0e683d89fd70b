"""Flower Message-API strategies: FABA, GAA, FLTrust, Zeno, Krum and the baselines.

Every strategy subclasses :class:`RobustStrategy` (itself Flower's ``FedAvg``):
replace ``FedAvg(...)`` by e.g. ``FABA(num_malicious_nodes=3)``.
"""

from flwr_byz.aggregation.registry import REGISTRY, Rule

from .brute_force import BruteForce
from .bulyan import Bulyan
from .faba import FABA
from .fltrust import FLTrust
from .gaa import GAA
from .generated import RuleStrategy, generated_strategy
from .geomed import GeoMed
from .krum import Krum
from .mean import Mean
from .median import Median
from .multikrum import MultiKrum
from .reply_validation import RejectReason
from .robust_strategy import RobustStrategy
from .round_report import MissingReason, RoundReport, RoundStatus
from .sampling import NotEnoughNodesError
from .trimmed_mean import TrimmedMean
from .zeno import Zeno

#: The strategy classes written by hand (rules with more than a registry entry).
_WRITTEN: dict[str, type[RobustStrategy]] = {
    cls.rule_name: cls
    for cls in (
        BruteForce,
        Bulyan,
        FABA,
        FLTrust,
        GeoMed,
        Krum,
        Mean,
        Median,
        MultiKrum,
        TrimmedMean,
        Zeno,
    )
}


def strategy_for(rule: Rule) -> type[RobustStrategy]:
    """The strategy class of a registered rule: its hand-written class in this
    package, or one generated from its registry entry."""
    return _WRITTEN.get(rule.name) or generated_strategy(rule)


#: Strategy class per run-config name (``strategy`` key), from the rule registry.
STRATEGIES: dict[str, type[RobustStrategy]] = {
    rule.name: strategy_for(rule) for rule in REGISTRY
}
STRATEGIES["gaa"] = GAA

__all__ = [
    "FABA",
    "GAA",
    "STRATEGIES",
    "BruteForce",
    "Bulyan",
    "FLTrust",
    "GeoMed",
    "Krum",
    "Mean",
    "Median",
    "MissingReason",
    "MultiKrum",
    "NotEnoughNodesError",
    "RejectReason",
    "RobustStrategy",
    "RoundReport",
    "RoundStatus",
    "RuleStrategy",
    "TrimmedMean",
    "Zeno",
    "strategy_for",
]
