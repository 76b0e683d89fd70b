"""Attack configuration: names, run-config defaults, validation, who is Byzantine.

Keys are Flower run-config keys (kebab case, as in ``[tool.flwr.app.config]``).
Every reader merges the run config over :data:`ATTACK_DEFAULTS`, so a missing key
means its default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from flwr_byz.aggregation.bounds import byzantine_budget
from flwr_byz.seeding import numpy_stream

from .omniscient import PERTURBATIONS
from .roles import PretenseRole, RandomizedRole, Role, StaticRole, initial_role

# Defence-aware colluders (flwr_byz.attacks.tailored, .colluders): they know the
# defence's rule and thresholds and the data distribution, never the server's QV
# samples; they see the honest updates and pool their own data, so only the
# server-side injector can run them.
ADAPTIVE_ATTACKS: tuple[str, ...] = (
    "qv-orthogonal",
    "pretense-drift",
    "class-targeted",
    "sybil",
    "sybil-noise",
    "fang-krum",
    "fang-trim",
    "agr-tailored",
)

ATTACKS: tuple[str, ...] = (
    "none",
    "random-fault",
    "uniform-noise",
    "sign-flip",
    "scaling",
    "label-flip",
    "alie",
    "ipm",
    "adaptive-fault",
    "min-max",
    "min-sum",
    *ADAPTIVE_ATTACKS,
)
PATTERNS: tuple[str, ...] = ("static", "pretense", "randomized")
SIDES: tuple[str, ...] = ("auto", "client", "server")

# Need the honest updates of the round: only the server-side injector can run them.
OMNISCIENT_ATTACKS: tuple[str, ...] = ("alie", "ipm", "min-max", "min-sum")
# Run only by the server-side injector.
COLLUDING_ATTACKS: tuple[str, ...] = OMNISCIENT_ATTACKS + ADAPTIVE_ATTACKS
# Adaptive attacks that need the colluders' data and the model.
COLLUDER_DATA_ATTACKS: tuple[str, ...] = ("qv-orthogonal", "class-targeted")
# The attack pretense-drift turns into, and the base vector of the sybils.
DRIFT_ATTACKS: tuple[str, ...] = (
    *(a for a in COLLUDING_ATTACKS if a not in ("pretense-drift", "sybil-noise")),
    "sign-flip",
)
SYBIL_BASES: tuple[str, ...] = (
    "sign-flip",
    "qv-orthogonal",
    "class-targeted",
    "ipm",
    "alie",
    "min-max",
    "min-sum",
)
# Need the node's data and model: only a ClientApp's training code can run them.
DATA_ATTACKS: tuple[str, ...] = ("label-flip", "adaptive-fault")
# Need only the node's own update: run anywhere (client mod or server injector).
UPDATE_ATTACKS: tuple[str, ...] = (
    "random-fault",
    "uniform-noise",
    "sign-flip",
    "scaling",
)

# The client learning rate the noise attacks assume when the run config has none
# (the honest clients of this app use the same default, the `learning-rate` key's).
DEFAULT_LEARNING_RATE = 0.5

ATTACK_DEFAULTS: dict[str, Any] = {
    "attack": "none",
    "attack-pattern": "static",
    "attack-side": "auto",
    "byzantine-fraction": 0.0,
    "byzantine-partitions": "",
    "pretense-rounds": 5,
    "flip-period": 5,
    "flip-probability": 0.5,
    "initial-byzantine-probability": 1.0,
    "noise-mean": 0.5,
    "noise-std": 2e-6,
    "noise-bound": 0.25,
    "scale-factor": 10.0,
    "ipm-epsilon": 0.5,
    "alie-z": "auto",
    "perturbation": "std",
    "adaptive-alpha": 10.0,
    "qv-epsilon": 0.3,
    "colluder-qv-size": 200,
    "drift-honest-rounds": 5,
    "drift-blend-rounds": 5,
    "drift-attack": "qv-orthogonal",
    "target-class": 0,
    "sybil-base": "sign-flip",
    "sybil-noise": 0.05,
    "fang-trim-b": 2.0,
}

# Separates the partition draw from every other use of the seed.
_TAG_PARTITIONS = 0x42595A  # "BYZ"


def merged(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The attack keys of ``cfg`` over :data:`ATTACK_DEFAULTS` (plus ``seed``)."""
    out = {k: cfg.get(k, v) for k, v in ATTACK_DEFAULTS.items()}
    out["seed"] = cfg.get("seed", 0)
    return out


def _fail(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{key}={value!r} is not valid; valid values: {allowed}")


def _number(cfg: Mapping[str, Any], key: str, allowed: str) -> float:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(key, value, allowed)
    if not math.isfinite(value):
        raise _fail(key, value, allowed)
    return float(value)


def _integer(cfg: Mapping[str, Any], key: str, minimum: int) -> int:
    value = cfg[key]
    allowed = f"integers >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(key, value, allowed)
    if float(value) != int(value) or value < minimum:
        raise _fail(key, value, allowed)
    return int(value)


def _choice(cfg: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = cfg[key]
    if value not in choices:
        raise _fail(key, value, ", ".join(choices))
    return str(value)


def parse_partition_list(value: Any) -> list[int]:
    """Parse ``"0,3,5"`` (or an int, or a list of ints) into sorted unique ids."""
    allowed = (
        'comma-separated partition ids >= 0, e.g. "0,3,5", or "" (use the fraction)'
    )
    if isinstance(value, bool):
        raise _fail("byzantine-partitions", value, allowed)
    if isinstance(value, int):
        items: list[Any] = [value]
    elif isinstance(value, str):
        items = [s.strip() for s in value.split(",") if s.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise _fail("byzantine-partitions", value, allowed)
    try:
        ids = [int(s) for s in items]
    except (TypeError, ValueError):
        raise _fail("byzantine-partitions", value, allowed) from None
    if any(i < 0 for i in ids):
        raise _fail("byzantine-partitions", value, allowed)
    return sorted(set(ids))


def resolve_side(cfg: Mapping[str, Any]) -> str:
    """Where the configured attack runs: ``"none"``, ``"client"`` or ``"server"``.

    ``attack-side = "auto"`` runs the colluding attacks (ALIE, IPM, min-max,
    min-sum and the adaptive suite, :data:`ADAPTIVE_ATTACKS`) in the server-side
    injector and every other attack in the malicious clients.
    """
    c = merged(cfg)
    if c["attack"] == "none":
        return "none"
    if c["attack-side"] == "auto":
        return "server" if c["attack"] in COLLUDING_ATTACKS else "client"
    return str(c["attack-side"])


def check_attack_config(cfg: Mapping[str, Any]) -> None:
    """Validate the attack keys of a run config.

    Raises
    ------
    ValueError
        Naming the key, the bad value and the valid values: unknown attack, pattern
        or side, ``byzantine-fraction`` outside [0, 1), malformed
        ``byzantine-partitions``, ``pretense-rounds`` < 0, ``flip-period`` < 1,
        ``flip-probability`` or ``initial-byzantine-probability`` outside [0, 1],
        negative noise parameters, adaptive-suite parameters out of range
        (``qv-epsilon``, ``sybil-noise`` < 0, ``fang-trim-b`` < 1,
        ``colluder-qv-size`` < 1, negative ``drift-*-rounds`` or ``target-class``,
        an unknown ``drift-attack`` or ``sybil-base``), a colluding attack with
        ``attack-side = "client"`` (a client sees only its own update) or a data
        attack with ``attack-side = "server"`` (the server has no client data).
    """
    c = merged(cfg)
    attack = _choice(c, "attack", ATTACKS)
    _choice(c, "attack-pattern", PATTERNS)
    side = _choice(c, "attack-side", SIDES)
    fraction = _number(c, "byzantine-fraction", "floats in [0, 1)")
    if not 0.0 <= fraction < 1.0:
        raise _fail("byzantine-fraction", c["byzantine-fraction"], "floats in [0, 1)")
    parse_partition_list(c["byzantine-partitions"])
    _integer(c, "pretense-rounds", 0)
    _integer(c, "flip-period", 1)
    for key in ("flip-probability", "initial-byzantine-probability"):
        if not 0.0 <= _number(c, key, "floats in [0, 1]") <= 1.0:
            raise _fail(key, c[key], "floats in [0, 1]")
    _number(c, "noise-mean", "finite floats")
    for key in ("noise-std", "noise-bound", "adaptive-alpha"):
        if _number(c, key, "finite floats >= 0") < 0:
            raise _fail(key, c[key], "finite floats >= 0")
    _number(c, "scale-factor", "finite floats")
    _number(c, "ipm-epsilon", "finite floats")
    if c["alie-z"] != "auto":
        _number(c, "alie-z", '"auto" or a finite float')
    _choice(c, "perturbation", PERTURBATIONS)
    for key in ("qv-epsilon", "sybil-noise"):
        if _number(c, key, "finite floats >= 0") < 0:
            raise _fail(key, c[key], "finite floats >= 0")
    if _number(c, "fang-trim-b", "finite floats >= 1") < 1:
        raise _fail("fang-trim-b", c["fang-trim-b"], "finite floats >= 1")
    _integer(c, "colluder-qv-size", 1)
    _integer(c, "drift-honest-rounds", 0)
    _integer(c, "drift-blend-rounds", 0)
    _integer(c, "target-class", 0)
    _choice(c, "drift-attack", DRIFT_ATTACKS)
    _choice(c, "sybil-base", SYBIL_BASES)
    seed = c["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _fail("seed", seed, "integers >= 0")
    if side == "client" and attack in COLLUDING_ATTACKS:
        raise _fail(
            "attack-side",
            side,
            f'"auto" or "server" for attack={attack!r} (colluding: it needs the '
            "honest updates, which only the server-side injector sees)",
        )
    if side == "server" and attack in DATA_ATTACKS:
        raise _fail(
            "attack-side",
            side,
            f'"auto" or "client" for attack={attack!r} (it needs the node\'s own '
            "data and model)",
        )


def byzantine_partitions(cfg: Mapping[str, Any], num_partitions: int) -> list[int]:
    """Sorted partition ids of the compromised nodes.

    ``byzantine-partitions = "0,3,5"`` lists them; otherwise
    ``floor(byzantine-fraction · num_partitions)`` ids are drawn without replacement,
    a pure function of ``seed``. No attack (``attack = "none"``) means no one.
    """
    check_attack_config(cfg)
    c = merged(cfg)
    if c["attack"] == "none":
        return []
    explicit = parse_partition_list(c["byzantine-partitions"])
    if explicit:
        bad = [i for i in explicit if i >= num_partitions]
        if bad:
            raise _fail(
                "byzantine-partitions",
                c["byzantine-partitions"],
                f"ids in [0, {num_partitions}) (num-partitions={num_partitions})",
            )
        return explicit
    k = byzantine_budget(float(c["byzantine-fraction"]), num_partitions)
    rng = numpy_stream(int(c["seed"]), _TAG_PARTITIONS, num_partitions)
    return sorted(int(i) for i in rng.permutation(num_partitions)[:k])


def role_for(cfg: Mapping[str, Any], node: int) -> Role:
    """The role schedule of compromised node ``node`` (partition id or node id)."""
    c = merged(cfg)
    pattern = c["attack-pattern"]
    if pattern == "static":
        return StaticRole()
    if pattern == "pretense":
        return PretenseRole(int(c["pretense-rounds"]))
    seed = int(c["seed"])
    return RandomizedRole(
        initial_byzantine=initial_role(
            seed, node, float(c["initial-byzantine-probability"])
        ),
        period=int(c["flip-period"]),
        probability=float(c["flip-probability"]),
        seed=seed,
        node=node,
    )
