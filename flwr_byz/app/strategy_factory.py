"""Run config → a configured flwr-byz strategy."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from flwr.serverapp.strategy import FedAvg, Strategy

from flwr_byz.aggregation.registry import get_rule
from flwr_byz.data import ServerData

from .liveness import sampling_settings


def build_strategy(
    cfg: Mapping[str, Any],
    num_nodes: int,
    server_data: ServerData,
    model_factory: Callable[[], torch.nn.Module],
    device: str,
) -> Strategy:
    """The strategy named by ``cfg['strategy']``, with the run's settings.

    The Byzantine budget is given as a fraction, so ``f = floor(α·n)`` follows the
    number of valid replies of each round (``f = floor(α·n)``, as in the FABA
    paper).
    """
    from flwr_byz import strategy as strategies

    name = cfg["strategy"]
    # Sample from the nodes connected each round, down to min-available-nodes
    # (never the start-up count: one dead node would stall every later round).
    sampling = sampling_settings(cfg, num_nodes)
    common: dict[str, Any] = {
        "fraction_train": float(cfg["fraction-train"]),
        "fraction_evaluate": float(cfg["fraction-evaluate"]),
        **sampling,
        "server_learning_rate": float(cfg["server-learning-rate"]),
        "device": device,
        "round_timeout": float(cfg["round-timeout"]),
        "node_wait_timeout": float(cfg["node-wait-timeout"]),
    }
    alpha = float(cfg["assumed-byzantine-fraction"])
    if cfg["distance-sketch"]:
        common["distance_sketch"] = int(cfg["distance-sketch"])
        common["sketch_seed"] = int(cfg["seed"])
    if name == "fedavg":
        # Flower's own, untouched: the peer every robust rule is measured against.
        # (The app bounds its node wait from outside, see ObservedStrategy.)
        return FedAvg(
            fraction_train=common["fraction_train"],
            fraction_evaluate=common["fraction_evaluate"],
            **sampling,
        )
    if name == "gaa":
        return strategies.GAA(
            model_factory=model_factory,
            qv_set=(server_data.qv.features, server_data.qv.labels),
            gamma=float(cfg["gaa-gamma"]),
            window=int(cfg["gaa-window"]),
            policy=str(cfg["gaa-policy"]),
            policy_lr=float(cfg["gaa-policy-lr"]),
            backprop=str(cfg["gaa-backprop"]),
            trusted_data=(
                (server_data.qv.features, server_data.qv.labels)
                if cfg["gaa-trusted-worker"]
                else None
            ),
            # The trusted worker trains like an honest client of this app.
            trusted_lr=float(cfg["learning-rate"]),
            trusted_steps=int(cfg["local-steps"]),
            trusted_batch_size=int(cfg["batch-size"]) or None,
            seed=int(cfg["seed"]),
            policy_options=(
                {
                    "reference_gain": float(cfg["gaa-reference-gain"]),
                    "uphill_margin": float(cfg["gaa-uphill-margin"]),
                    "collusion_threshold": float(cfg["gaa-collusion-threshold"]),
                }
                if cfg["gaa-policy"] == "evidence"
                else None
            ),
            **common,
        )
    if name == "fltrust":
        # The root dataset is the server's QV set; the server update follows the
        # clients' recipe of this app.
        return strategies.FLTrust(
            model_factory=model_factory,
            root_set=(server_data.qv.features, server_data.qv.labels),
            trusted_lr=float(cfg["learning-rate"]),
            trusted_steps=int(cfg["local-steps"]),
            trusted_batch_size=int(cfg["batch-size"]) or None,
            seed=int(cfg["seed"]),
            **common,
        )
    if name == "zeno":
        lr = float(cfg["learning-rate"])
        return strategies.Zeno(
            model_factory=model_factory,
            qv_set=(server_data.qv.features, server_data.qv.labels),
            # Paper (gradients u, step γ = λ) -> updates Δ = −λu: γ = 1, ρ/λ².
            rho=float(cfg["zeno-rho"]) / (lr * lr),
            gamma=1.0,
            batch_size=int(cfg["zeno-batch-size"]) or None,
            malicious_fraction=float(cfg["zeno-b-fraction"]),
            seed=int(cfg["seed"]),
            **common,
        )
    # Every other registered rule: its strategy, with the assumed fraction as the
    # budget when f changes what it does, and its own parameters from their keys.
    rule = get_rule(name)
    budget = {"malicious_fraction": alpha} if rule.uses_f else {}
    own = {
        param.name: cfg[key]
        for param in rule.params
        if (key := rule.config_key(param)) is not None
    }
    return strategies.STRATEGIES[name](**budget, **own, **common)
