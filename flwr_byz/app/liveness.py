"""How many nodes the app's rounds wait for, from the run config.

A run goes on while at least ``min-available-nodes`` nodes are connected: each
round samples from the nodes connected then (a node that died is simply not
sampled again), and waits at most ``node-wait-timeout`` seconds for that floor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr_byz.aggregation import min_nodes
from flwr_byz.aggregation.registry import RULE_BY_NAME

from .config import RunConfigError, assumed_f


def node_floor(cfg: Mapping[str, Any], num_nodes: int) -> int:
    """The ``min-available-nodes`` of a run with ``num_nodes`` nodes at start-up.

    ``0`` (the default) means what the rule needs: its bound for the assumed
    budget of the nodes sampled at start-up (FABA with f = 1: 3), at least 2, at
    most ``num_nodes``.

    Raises
    ------
    RunConfigError
        When an explicit value exceeds the nodes connected at start-up.
    """
    explicit = int(cfg["min-available-nodes"])
    if explicit > num_nodes:
        raise RunConfigError(
            f"run-config key 'min-available-nodes' = {explicit} but only "
            f"{num_nodes} nodes are connected; lower it (0 = what the rule needs) "
            "or start more SuperNodes"
        )
    if explicit:
        return explicit
    sampled = max(1, int(num_nodes * float(cfg["fraction-train"])))
    rule = RULE_BY_NAME.get(str(cfg["strategy"]))
    needed = 1 if rule is None else int(min_nodes(rule.name, assumed_f(cfg, sampled)))
    return max(1, min(num_nodes, max(2, needed)))


def sampling_settings(cfg: Mapping[str, Any], num_nodes: int) -> dict[str, int]:
    """``min_available_nodes``, ``min_train_nodes`` and ``min_evaluate_nodes`` of
    the app's strategies (Flower's names), none above the floor, so a round never
    waits for a node that is gone."""
    floor = node_floor(cfg, num_nodes)
    sampled = max(1, int(num_nodes * float(cfg["fraction-train"])))
    return {
        "min_available_nodes": floor,
        "min_train_nodes": max(1, min(sampled, floor)),
        "min_evaluate_nodes": max(1, min(2, floor)),
    }
