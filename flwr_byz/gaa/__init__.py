"""The GAA agent of Justinian's GAAvernor: learned credit over workers from a
server-held QV set.

Pure torch, no Flower import; ``flwr_byz.strategy.GAA`` wraps it.
"""

import warnings
from typing import Any

from .agent import BACKPROP, OPTIMIZERS, POLICIES, TRUSTED_NODE_ID, GAAAgent, GAAStep
from .evidence_policy import EvidencePolicy
from .features import FEATURE_NAMES, evidence_features
from .observation import Observation
from .paper_policy import PaperPolicy
from .qv import QVObjective, qv_tensors
from .trusted import TrustedWorker

__all__ = [
    "BACKPROP",
    "FEATURE_NAMES",
    "OPTIMIZERS",
    "POLICIES",
    "TRUSTED_NODE_ID",
    "EvidencePolicy",
    "GAAAgent",
    "GAAStep",
    "Observation",
    "PaperPolicy",
    "QVObjective",
    "TrustedWorker",
    "evidence_features",
    "qv_tensors",
]


def __getattr__(name: str) -> Any:
    if name == "StepResult":  # the name of GAAStep for one more release
        warnings.warn(
            "flwr_byz.gaa.StepResult is deprecated; use flwr_byz.gaa.GAAStep",
            DeprecationWarning,
            stacklevel=2,
        )
        return GAAStep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
