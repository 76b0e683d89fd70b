"""Byzantine behaviours: role schedule × tampering algorithm (the threat
models of the GAA paper, §3 and §5.1.2–3, and the FABA paper, §4).

Two places to run them:

- :func:`byzantine_mod`, a Flower client mod that turns any ClientApp malicious
  (each attacker sees only itself: real deployments and simulations);
- :class:`ServerSideAttack`, a Strategy wrapper for colluding, omniscient attackers
  (ALIE, IPM, min-max, min-sum, and the defence-aware suite of
  :data:`ADAPTIVE_ATTACKS`) in simulations.
"""

from flwr_byz.configuration_errors import CONFIGURATION_ERROR, is_configuration_error

from .active import ActiveAttack, active_attack
from .adaptive import adaptive_fault_gradient
from .behaviour import attack_generator, tamper_update
from .colluders import Colluders, colluder_qv_samples, load_colluders
from .config import (
    ADAPTIVE_ATTACKS,
    ATTACK_DEFAULTS,
    ATTACKS,
    COLLUDING_ATTACKS,
    DATA_ATTACKS,
    DEFAULT_LEARNING_RATE,
    OMNISCIENT_ATTACKS,
    PATTERNS,
    SIDES,
    UPDATE_ATTACKS,
    byzantine_partitions,
    check_attack_config,
    resolve_side,
    role_for,
)
from .mod import (
    ByzantineMod,
    ModConfigurationError,
    byzantine_mod,
    is_compromised,
    node_key,
)
from .omniscient import PERTURBATIONS, alie, alie_z, ipm, min_max, min_sum
from .roles import PretenseRole, RandomizedRole, StaticRole
from .server_side import SERVER_SIDE_ATTACKS, ServerSideAttack, uses_colluder_data
from .tailored import (
    agr_tailored,
    drift_weight,
    fang_krum,
    fang_trim,
    honest_norm,
    qv_orthogonal,
    scaled_to,
    sybil_rows,
)
from .tampering import label_flip, random_fault, scaling, sign_flip, uniform_noise

__all__ = [
    "ADAPTIVE_ATTACKS",
    "ATTACKS",
    "ATTACK_DEFAULTS",
    "COLLUDING_ATTACKS",
    "CONFIGURATION_ERROR",
    "DATA_ATTACKS",
    "DEFAULT_LEARNING_RATE",
    "OMNISCIENT_ATTACKS",
    "PATTERNS",
    "PERTURBATIONS",
    "SERVER_SIDE_ATTACKS",
    "SIDES",
    "UPDATE_ATTACKS",
    "ActiveAttack",
    "ByzantineMod",
    "Colluders",
    "ModConfigurationError",
    "PretenseRole",
    "RandomizedRole",
    "ServerSideAttack",
    "StaticRole",
    "active_attack",
    "adaptive_fault_gradient",
    "agr_tailored",
    "alie",
    "alie_z",
    "attack_generator",
    "byzantine_mod",
    "byzantine_partitions",
    "check_attack_config",
    "colluder_qv_samples",
    "drift_weight",
    "fang_krum",
    "fang_trim",
    "honest_norm",
    "ipm",
    "is_compromised",
    "is_configuration_error",
    "label_flip",
    "load_colluders",
    "min_max",
    "min_sum",
    "node_key",
    "qv_orthogonal",
    "random_fault",
    "resolve_side",
    "role_for",
    "scaled_to",
    "scaling",
    "sign_flip",
    "sybil_rows",
    "tamper_update",
    "uniform_noise",
    "uses_colluder_data",
]
