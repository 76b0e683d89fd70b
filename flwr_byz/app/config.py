"""The app's run configuration: every key, its default, and its validation.

Flower hands the ServerApp and ClientApp a flat ``run_config`` of kebab-case keys
(``[tool.flwr.app.config]`` in ``pyproject.toml``, overridden with
``flwr run . --run-config "k=v"``). Everything is checked here, before the first
round, so that a wrong value stops the run with one message naming the key, the
value and what is allowed — instead of surfacing as a crash in round 7.

The data and attack layers own their keys (``DATA_DEFAULTS``, ``ATTACK_DEFAULTS``)
and their checks; this module owns the server, strategy and client-training keys and
puts the three together.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from flwr.supercore import log

from flwr_byz.aggregation import byzantine_budget, min_nodes
from flwr_byz.aggregation.registry import REGISTRY, RULE_BY_NAME
from flwr_byz.attacks import ATTACK_DEFAULTS, check_attack_config
from flwr_byz.data import DATA_DEFAULTS, check_data_config
from flwr_byz.models import MODELS
from flwr_byz.validation import boolean, integer, number, one_of


class RunConfigError(ValueError):
    """A run-config value that cannot work; the message says what to change."""


#: The shortest ``round-timeout`` and ``node-wait-timeout`` (seconds).
MIN_TIMEOUT_S = 1.0


#: Every value of the ``strategy`` key: GAA, Flower's own FedAvg (the undefended
#: peer), and every rule of the registry.
STRATEGY_NAMES = ("gaa", "fedavg", *(rule.name for rule in REGISTRY))


@dataclass(frozen=True)
class Key:
    """One server-side run-config key: its default, meaning and check."""

    default: Any
    help: str
    check: Callable[[Any], str | None]


def _sketch_width(value: Any) -> str | None:
    if integer(0)(value) is None and (value == 0 or value >= 16):
        return None
    return "0 or an integer >= 16"


def _is_str(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string"


def _seconds_at_least(low: float, high: float) -> Callable[[Any], str | None]:
    within = number(low, high)

    def check(value: Any) -> str | None:
        if within(value) is None:
            return None
        return (
            f"a number of seconds in [{low:g}, {high:g}]: a shorter wait leaves "
            f"no node time to answer; set it to at least {low:g}"
        )

    return check


def _output_dir(value: Any) -> str | None:
    """A directory inside the working directory, or an absolute path: never ``""``
    and never a path with ``..`` (it would climb out, or hide where it leads)."""
    allowed = (
        "a non-empty directory path inside the ServerApp's working directory, or "
        "an absolute path, without '..' (write the directory it leads to instead)"
    )
    if not isinstance(value, str) or not value.strip():
        return allowed
    if ".." in PurePath(value).parts:
        return allowed
    return None


def check_run_dir(run_dir: Path, output_dir: str) -> None:
    """Refuse a run directory that cannot be created or written, before the run.

    ``run_dir`` is ``output_dir`` expanded (``{run}``) and resolved.

    Raises
    ------
    RunConfigError
        Naming ``output-dir`` and what to change: the path, or one of its parent
        directories, is a file; or the nearest existing directory is not writable.
    """
    # The nearest part of the path that exists decides.
    path = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not path.is_dir():
        raise RunConfigError(
            f"run-config key 'output-dir' = {output_dir!r}: {str(path)!r} is a "
            "file, not a directory; set 'output-dir' to a directory (a new path "
            "or an existing directory), or move that file away"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunConfigError(
            f"run-config key 'output-dir' = {output_dir!r}: the directory "
            f"{str(path)!r} is not writable by this user; set 'output-dir' to a "
            "directory it may write"
        )


SERVER_KEYS: dict[str, Key] = {
    "num-server-rounds": Key(20, "federated rounds", integer(1)),
    "strategy": Key(
        "gaa",
        "the defence; 'fedavg' is Flower's own FedAvg, the undefended baseline",
        one_of(STRATEGY_NAMES),
    ),
    "assumed-byzantine-fraction": Key(
        0.3,
        "the defence's α: it tolerates f = floor(α·n) Byzantine replies "
        "(FABA, Krum, MultiKrum, Bulyan, GeoMed, brute force; trimmed mean drops f "
        "per side)",
        number(0.0, 0.5, high_open=True),
    ),
    "fraction-train": Key(
        1.0, "share of nodes sampled each round", number(0.0, 1.0, low_open=True)
    ),
    "fraction-evaluate": Key(
        0.0,
        "share of nodes asked for federated evaluation each round (the global "
        "model is always evaluated on the server's test set)",
        number(0.0, 1.0),
    ),
    "min-available-nodes": Key(
        0,
        "each round samples from the nodes connected then, waiting (at most "
        "node-wait-timeout s) until this many are connected; 0 = what the rule "
        "needs: max(2, its bound for the assumed f)",
        integer(0),
    ),
    "round-timeout": Key(
        600.0,
        "seconds a round waits for replies; then it aggregates what arrived and "
        "records the other sampled nodes as missing (timed-out)",
        _seconds_at_least(MIN_TIMEOUT_S, 1e6),
    ),
    "node-wait-timeout": Key(
        300.0,
        "seconds the run waits for enough connected nodes (at start-up and before "
        "each round) before it stops with a message",
        _seconds_at_least(MIN_TIMEOUT_S, 1e6),
    ),
    "server-learning-rate": Key(
        1.0, "η_server in w ← w + η·A(Δ)", number(0.0, 1e6, low_open=True)
    ),
    "distance-sketch": Key(
        0,
        "0 = exact distances; k >= 16 = FABA, Krum, MultiKrum, Bulyan and GeoMed "
        "decide on a seeded k-column count sketch of the updates (opt-in, for many "
        "clients: squared distances within a relative std of sqrt(2/k))",
        _sketch_width,
    ),
    "gaa-policy": Key("evidence", "GAA policy", one_of(("evidence", "paper"))),
    "gaa-window": Key(
        5, "GAA: T, the rounds of one learning window of the policy", integer(1)
    ),
    "gaa-episode-length": Key(
        0,
        "deprecated name of 'gaa-window' (0: not given; any other value is used as "
        "'gaa-window', with a warning)",
        integer(0),
    ),
    "gaa-episodes": Key(
        1,
        "GAA: episodes of the paper's outer loop (Algorithm 1): the model restarts "
        "from the same initial weights each episode, the policy and the credits "
        "carry over; results.json reports every episode",
        integer(1),
    ),
    "gaa-gamma": Key(0.9, "GAA discount γ", number(0.0, 1.0)),
    "gaa-policy-lr": Key(
        0.01,
        "GAA policy learning rate (0: the prior policy, no learning)",
        number(0.0, 1e3),
    ),
    "gaa-reference-gain": Key(
        3.3,
        "GAA evidence policy: how hard the consensus reference leans towards "
        "QV descent when the credit-weighted consensus goes uphill on the QV set",
        number(0.0, 1e3),
    ),
    "gaa-uphill-margin": Key(
        0.25,
        "GAA evidence policy: the consensus counts as going uphill when its cosine "
        "with the QV descent direction is below minus this many typical "
        "alignments of one node (the round's median |cosine|)",
        number(0.0, 100.0),
    ),
    "gaa-collusion-threshold": Key(
        0.95,
        "GAA evidence policy: updates whose cosine exceeds this share one voice "
        "in the credit-weighted references (near-identical colluders count as "
        "one worker), and copies (cosine above 0.999) share one weight in the "
        "aggregate; 1 = no discount in either",
        number(0.0, 1.0),
    ),
    "gaa-backprop": Key(
        "exact", "GAA episode gradient", one_of(("exact", "truncated"))
    ),
    "gaa-trusted-worker": Key(
        False, "GAA: add the server's own update from its QV data", boolean()
    ),
    "zeno-b-fraction": Key(
        0.5,
        "Zeno discards b = floor(zeno-b-fraction·n) lowest-scoring updates (b must "
        "cover the Byzantine replies; a majority is allowed)",
        number(0.0, 1.0, high_open=True),
    ),
    "zeno-rho": Key(
        5e-4,
        "Zeno's ρ in the paper's gradient units; applied to updates as "
        "ρ/learning-rate²",
        number(0.0, 1e6),
    ),
    "zeno-batch-size": Key(
        4,
        "Zeno: server samples drawn per round for the score (n_r); 0 = the whole "
        "QV set",
        integer(0),
    ),
    "detection-k": Key(
        0,
        "GAA+ detection reports the k lowest-credit nodes; 0 = the true number of "
        "Byzantine nodes (as in the paper's Table 4)",
        integer(0),
    ),
    "model": Key("auto", "the model", one_of(MODELS)),
    "local-steps": Key(
        1, "local SGD steps per round (1 with full batch = FedSGD)", integer(1)
    ),
    "learning-rate": Key(
        0.5, "client SGD learning rate λ", number(0.0, 1e3, low_open=True)
    ),
    "batch-size": Key(0, "client batch size; 0 = full batch", integer(0)),
    "seed": Key(0, "seed of everything", integer(0)),
    "device": Key("auto", "where torch runs", one_of(("auto", "cpu", "cuda"))),
    "output-dir": Key(
        "results/{run}",
        "the run directory: results.json and checkpoint.pt go there (relative "
        "paths resolve against the ServerApp's working directory, printed at the "
        "end of the run); '{run}' becomes '<UTC date-time>-<run id>', so that "
        "every run gets a directory of its own. A directory that already holds "
        "another run's results is refused (resume that run with 'resume')",
        _output_dir,
    ),
    "resume": Key(
        "",
        "'' = a fresh run; else the run directory (or its checkpoint.pt) of an "
        "interrupted run to continue from its last finished round, bit for bit: "
        "the run config must be the interrupted run's (only 'output-dir', "
        "'resume' and 'fault-stop-after-round' may differ); results go on in "
        "that run's directory",
        _is_str,
    ),
    "fault-stop-after-round": Key(
        0,
        "testing only (fault injection): stop the run as a crash would, right "
        "after the checkpoint of its k-th round (rounds of every episode counted "
        "together); results.json then says 'interrupted'; 0 = off",
        integer(0),
    ),
}


def _rule_parameter_keys() -> dict[str, Key]:
    """The run-config key of every rule parameter, from the rules' registry entries."""
    keys: dict[str, Key] = {}
    for rule in REGISTRY:
        for param in rule.params:
            name = rule.config_key(param)
            if name is not None and name not in SERVER_KEYS:
                keys[name] = Key(
                    param.default, f"{rule.name}: {param.help}", param.check
                )
    return keys


SERVER_KEYS.update(_rule_parameter_keys())


#: The run-config keys the ClientApp reads for its local training.
CLIENT_KEYS = ("model", "local-steps", "learning-rate", "batch-size", "seed", "device")


def client_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The client-training keys (:data:`CLIENT_KEYS`) of ``run_config``, defaults
    where absent, each checked as :func:`check_run_config` checks it.

    Raises
    ------
    RunConfigError
        Naming the key, the value given and what is allowed.
    """
    cfg = {}
    for name in CLIENT_KEYS:
        key = SERVER_KEYS[name]
        cfg[name] = run_config.get(name, key.default)
        _check_key(name, key, cfg[name])
    return cfg


def _check_key(name: str, key: Key, value: Any) -> None:
    expected = key.check(value)
    if expected is not None:
        raise RunConfigError(
            f"run-config key {name!r} = {value!r} is invalid: expected "
            f"{expected} ({key.help})"
        )


def strategy_of_option(key: str) -> str | None:
    """The strategy a run-config key configures (``zeno-rho`` → ``zeno``), or None.

    Keys named ``<strategy>-...`` change nothing for any other strategy, so they are
    not part of another strategy's experiment identity.
    """
    for name in STRATEGY_NAMES:
        if key.startswith(f"{name}-"):
            return name
    return None


def non_default_settings(cfg: Mapping[str, Any], skip: Iterable[str] = ()) -> dict:
    """The run-config values of ``cfg`` that differ from the app's defaults.

    Options of another strategy than ``cfg['strategy']`` (see
    :func:`strategy_of_option`) and the keys in ``skip`` are left out.
    """
    defaults = app_defaults()
    skipped = set(skip)
    return {
        k: v
        for k, v in sorted(cfg.items())
        if k not in skipped
        and defaults.get(k) != v
        and strategy_of_option(k) in (None, cfg.get("strategy"))
    }


def app_defaults() -> dict[str, Any]:
    """Every run-config key of the app with its default value."""
    merged: dict[str, Any] = {}
    for part in (
        {k: key.default for k, key in SERVER_KEYS.items()},
        DATA_DEFAULTS,
        ATTACK_DEFAULTS,
    ):
        for name, value in part.items():
            if name in merged and merged[name] != value:
                raise AssertionError(f"run-config key {name!r} has two defaults")
            merged[name] = value
    return merged


def with_defaults(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The run config completed with the defaults of every missing key."""
    cfg = app_defaults()
    cfg.update(run_config)
    return cfg


#: Run-config keys renamed, old -> new; the old key still works for one release
#: (its default 0 means "not given").
RENAMED_KEYS = {"gaa-episode-length": "gaa-window"}


def _apply_renamed_keys(cfg: dict[str, Any]) -> None:
    """Move a renamed key's value to its new name, with a warning."""
    for old, new in RENAMED_KEYS.items():
        value = cfg.get(old, 0)
        if value == 0:
            continue
        if cfg[new] not in (SERVER_KEYS[new].default, value):
            raise RunConfigError(
                f"run-config keys {old!r} = {value!r} and {new!r} = {cfg[new]!r} "
                f"disagree; {old!r} is the deprecated name of {new!r}: set only {new!r}"
            )
        message = f"run-config key {old!r} is deprecated; use {new!r} = {value!r}"
        warnings.warn(message, DeprecationWarning, stacklevel=3)
        log(logging.WARNING, message)
        cfg[new], cfg[old] = value, 0


def check_run_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a run config and return it completed with defaults.

    Raises
    ------
    RunConfigError
        Naming the key, the value given and what is allowed, for the first key
        that cannot work.
    """
    cfg = with_defaults(run_config)
    unknown = sorted(set(cfg) - set(app_defaults()))
    if unknown:
        raise RunConfigError(
            f"unknown run-config key(s) {', '.join(map(repr, unknown))}; "
            f"known keys: {', '.join(sorted(app_defaults()))}"
        )
    _apply_renamed_keys(cfg)
    for name, key in SERVER_KEYS.items():
        _check_key(name, key, cfg[name])
    rule = RULE_BY_NAME.get(cfg["strategy"])
    for param in rule.params if rule is not None else ():
        name = rule.config_key(param)
        expected = param.check(cfg[name]) if name is not None else None
        if expected is not None:
            raise RunConfigError(
                f"run-config key {name!r} = {cfg[name]!r} is invalid for strategy "
                f"{rule.name!r}: expected {expected} ({param.help})"
            )
    if cfg["gaa-episodes"] > 1 and cfg["strategy"] != "gaa":
        raise RunConfigError(
            f"run-config key 'gaa-episodes' = {cfg['gaa-episodes']!r} needs "
            f"strategy = 'gaa' (got {cfg['strategy']!r}); set 'gaa-episodes' = 1"
        )
    if cfg["distance-sketch"] and not _decides_on_distances(cfg["strategy"]):
        raise RunConfigError(
            f"run-config key 'distance-sketch' = {cfg['distance-sketch']!r} needs a "
            "strategy that decides on pairwise distances (faba, krum, multikrum, "
            f"bulyan, geomed; got {cfg['strategy']!r}); set 'distance-sketch' = 0"
        )
    for component_check in (check_data_config, check_attack_config):
        try:
            component_check(cfg)
        except ValueError as err:
            raise RunConfigError(str(err)) from err
    return cfg


def _decides_on_distances(strategy: str) -> bool:
    rule = RULE_BY_NAME.get(strategy)
    return rule is not None and rule.uses_distances


def assumed_f(cfg: Mapping[str, Any], num_nodes: int) -> int:
    """The Byzantine budget f the defence is built with for ``num_nodes`` replies."""
    return byzantine_budget(float(cfg["assumed-byzantine-fraction"]), num_nodes)


def check_against_nodes(cfg: Mapping[str, Any], num_nodes: int) -> None:
    """Check that the chosen rule's bound can hold for the federation's size.

    Raises
    ------
    RunConfigError
        When even a round in which every sampled node answers could not satisfy
        the rule's precondition (e.g. Bulyan needs n >= 4f + 3).
    """
    sampled = max(1, int(num_nodes * float(cfg["fraction-train"])))
    # GAA needs one reply whatever f; FLTrust's and Zeno's bounds (1, b+1) are met
    # by any sampled set, so checking them with the assumed fraction is harmless.
    rule = cfg["strategy"]
    if rule not in RULE_BY_NAME:
        return
    f = assumed_f(cfg, sampled)
    needed = min_nodes(rule, f)
    if sampled < needed:
        raise RunConfigError(
            f"run-config key 'strategy' = {cfg['strategy']!r} needs at least "
            f"{needed} replies per round for f = {f} "
            f"('assumed-byzantine-fraction' = {cfg['assumed-byzantine-fraction']}), "
            f"but only {sampled} of {num_nodes} nodes are sampled "
            f"('fraction-train' = {cfg['fraction-train']}); lower "
            "'assumed-byzantine-fraction', raise 'fraction-train', add nodes, or pick "
            "another strategy"
        )
