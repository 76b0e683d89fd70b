"""The GAA agent of Justinian's GAAvernor: learned credit over workers from a
server-held QV set.

Pure torch, no Flower import; ``flwr_byz.strategy.GAA`` wraps it.
"""

from .agent import BACKPROP, OPTIMIZERS, POLICIES, TRUSTED_NODE_ID, GAAAgent, StepResult
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
    "Observation",
    "PaperPolicy",
    "QVObjective",
    "StepResult",
    "TrustedWorker",
    "evidence_features",
    "qv_tensors",
]
