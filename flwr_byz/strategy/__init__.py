"""Flower Message-API strategies: FABA, GAA, FLTrust, Zeno, Krum and the baselines.

Every strategy subclasses :class:`RobustStrategy` (itself Flower's ``FedAvg``):
replace ``FedAvg(...)`` by e.g. ``FABA(num_malicious_nodes=3)``.
"""

from .brute_force import BruteForce
from .bulyan import Bulyan
from .faba import FABA
from .fltrust import FLTrust
from .geomed import GeoMed
from .krum import Krum
from .mean import Mean
from .median import Median
from .multikrum import MultiKrum
from .reply_validation import RejectReason
from .robust_strategy import RobustStrategy
from .round_report import RoundReport, RoundStatus
from .trimmed_mean import TrimmedMean
from .zeno import Zeno

#: Strategy class per run-config name (``strategy`` key, DESIGN §8).
STRATEGIES: dict[str, type[RobustStrategy]] = {
    "faba": FABA,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
    "geomed": GeoMed,
    "median": Median,
    "trimmed-mean": TrimmedMean,
    "brute-force": BruteForce,
    "mean": Mean,
    "fltrust": FLTrust,
    "zeno": Zeno,
}

__all__ = [
    "FABA",
    "STRATEGIES",
    "BruteForce",
    "Bulyan",
    "FLTrust",
    "GeoMed",
    "Krum",
    "Mean",
    "Median",
    "MultiKrum",
    "RejectReason",
    "RobustStrategy",
    "RoundReport",
    "RoundStatus",
    "TrimmedMean",
    "Zeno",
]

try:  # GAA lives in its own module (GAA engineer); absent until it lands.
    from .gaa import GAA
except ImportError:  # pragma: no cover - depends on the checkout
    pass
else:
    STRATEGIES["gaa"] = GAA
    __all__ += ["GAA"]
