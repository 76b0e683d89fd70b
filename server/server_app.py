"""This repository's ServerApp: run config → data, model, strategy → rounds → results.

``flwr run .`` starts it. Every run-config key is checked before round 1; a bad
value stops the run with one message that names the key and what is allowed.

Liveness: every round waits at most ``round-timeout`` seconds for replies (the
sampled nodes without one are recorded as missing, by node id and reason), samples
from the nodes connected at that moment, and waits at most ``node-wait-timeout``
seconds for ``min-available-nodes`` of them; past that the run stops with a
message (kept in ``results.json``) instead of waiting forever.
"""

from __future__ import annotations

import random
import time
from logging import ERROR, INFO
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from flwr_byz.app.central_evaluation import make_evaluate_fn
from flwr_byz.app.config import (
    RunConfigError,
    check_against_nodes,
    check_run_config,
)
from flwr_byz.app.federation import discover_nodes, identify_new_nodes
from flwr_byz.app.liveness import node_floor
from flwr_byz.app.observed_strategy import ObservedStrategy
from flwr_byz.app.results import ResultsFile
from flwr_byz.app.round_log import RoundLog
from flwr_byz.app.strategy_factory import build_strategy
from flwr_byz.attacks import ServerSideAttack, byzantine_partitions
from flwr_byz.data import dataset_shape, load_server_data
from flwr_byz.devices import resolve_device
from flwr_byz.models import build_model
from flwr_byz.strategy.sampling import NotEnoughNodesError

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Validate the run config, run the rounds, write results, print a summary."""
    try:
        cfg = check_run_config(context.run_config)
    except RunConfigError as err:
        log(ERROR, "Invalid run configuration: %s", err)
        raise
    run(grid, cfg)


def _device(name: str) -> str:
    """The run config's ``device`` as a torch device string (``auto`` resolved)."""
    try:
        return str(resolve_device(name))
    except ValueError as err:
        raise RunConfigError(f"run-config key 'device': {err}") from err


def run(grid: Grid, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one configured experiment on ``grid``; return the results dict."""
    seed = int(cfg["seed"])
    # Flower samples nodes with Python's `random`; seed it so sampling repeats.
    random.seed(seed)
    torch.manual_seed(seed)
    device = _device(str(cfg["device"]))

    round_timeout = float(cfg["round-timeout"])
    node_wait_timeout = float(cfg["node-wait-timeout"])
    nodes = discover_nodes(
        grid,
        min_nodes=max(2, int(cfg["min-available-nodes"])),
        timeout=node_wait_timeout,
        # The first message a node gets also installs the app and starts a
        # ClientApp process: slower than a round, bounded like the node wait.
        query_timeout=min(60.0, node_wait_timeout),
    )
    identities = {nid: node.partition_id for nid, node in nodes.items()}
    num_nodes = len(nodes)
    check_against_nodes(cfg, num_nodes)
    node_floor(cfg, num_nodes)  # an explicit min-available-nodes must fit

    # A node's explicit `byzantine` switch (deployments) is the truth; otherwise the
    # run config's fraction picks partitions, exactly as the malicious clients do.
    byz_partitions = set(byzantine_partitions(cfg, num_nodes))
    byz_nodes = sorted(
        nid
        for nid, node in nodes.items()
        if node.byzantine
        or (node.byzantine is None and node.partition_id in byz_partitions)
    )
    ground_truth = {
        "byzantine-partition-ids": sorted({identities[n] for n in byz_nodes}),
        "byzantine-node-ids": byz_nodes,
        "node-partitions": {str(n): p for n, p in sorted(identities.items())},
    }

    num_features, num_classes = dataset_shape(cfg)
    server_data = load_server_data(cfg, num_nodes)

    def model_factory() -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(str(cfg["model"]), num_features, num_classes)

    model = model_factory()
    initial_arrays = ArrayRecord(model.state_dict())
    eval_model = model_factory().to(device)
    evaluate = make_evaluate_fn(
        eval_model, server_data.test.features, server_data.test.labels
    )

    strategy = build_strategy(cfg, num_nodes, server_data, model_factory, device)
    # Omniscient attacks (ALIE, IPM, min-max, min-sum) collude on the server; the
    # others run in the malicious ClientApps (byzantine_mod) and pass through.
    strategy = ServerSideAttack.from_run_config(strategy, cfg, identities)

    results = ResultsFile(cfg["output-dir"], cfg, ground_truth)
    round_log = RoundLog(results, identities, byz_nodes)

    def identify_joined(server_round: int, grid: Grid) -> None:
        # A restarted SuperNode has a new node id: ask it who it is, so its
        # partition and role stay in the record (and in the server-side attack).
        for nid, node in identify_new_nodes(
            grid, nodes, min(60.0, node_wait_timeout)
        ).items():
            nodes[nid] = node
            byzantine = bool(
                node.byzantine
                or (node.byzantine is None and node.partition_id in byz_partitions)
            )
            round_log.add_node(nid, node.partition_id, byzantine)
            if isinstance(strategy, ServerSideAttack):
                strategy.add_node(nid, node.partition_id, byzantine)

    observed = ObservedStrategy(
        strategy,
        on_train=round_log.on_train,
        order_key=lambda nid: (identities.get(nid, -1), nid),
        node_wait_timeout=node_wait_timeout,
        on_configure=identify_joined,
    )

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = evaluate(server_round, arrays)
        round_log.on_evaluate(server_round, metrics)
        return metrics

    started = time.perf_counter()
    stopped: NotEnoughNodesError | None = None
    try:
        # GAA's outer loop (Algorithm 1): every episode restarts from the same θ₀;
        # the strategy keeps its policy and credits (a new start is a new episode).
        for episode in range(1, int(cfg["gaa-episodes"]) + 1):
            round_log.episode = episode
            observed.start(
                grid=grid,
                initial_arrays=initial_arrays,
                num_rounds=int(cfg["num-server-rounds"]),
                # Each round aggregates what arrived within this many seconds.
                timeout=round_timeout,
                # The clients build their model from what the server's model is.
                train_config=ConfigRecord({"seed": seed, "num-classes": num_classes}),
                evaluate_config=ConfigRecord({"num-classes": num_classes}),
                evaluate_fn=evaluate_fn,
            )
    except NotEnoughNodesError as err:
        stopped = err
    summary = round_log.summary(
        strategy=strategy,
        detection_k=int(cfg["detection-k"]) or len(byz_nodes),
        total_time=time.perf_counter() - started,
    )
    if stopped is not None:
        last = results.data["rounds"][-1]  # round 0: the initial model
        episode = (
            f" of episode {last.get('episode', 1)}"
            if int(cfg["gaa-episodes"]) > 1
            else ""
        )
        summary["stopped"] = f"after round {last['round']}{episode}: {stopped}"
        results.finish(summary)
        log(ERROR, "Run stopped %s", summary["stopped"])
        log(ERROR, "results (rounds so far): %s", results.path)
        raise stopped
    results.finish(summary)
    for line in round_log.summary_lines(summary, results.path):
        log(INFO, "%s", line)
    return results.data
