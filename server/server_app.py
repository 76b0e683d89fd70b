"""This repository's ServerApp: run config → data, model, strategy → rounds → results.

``flwr run .`` starts it. Every run-config key is checked before round 1; a bad
value stops the run with one message that names the key and what is allowed.

Liveness: every round waits at most ``round-timeout`` seconds for replies (the
sampled nodes without one are recorded as missing, by node id and reason), samples
from the nodes connected at that moment, and waits at most ``node-wait-timeout``
seconds for ``min-available-nodes`` of them; past that the run stops with a
message (kept in ``results.json``) instead of waiting forever.

Each run writes into a run directory of its own (``results.json``, and
``checkpoint.pt`` after every round); ``resume`` continues an interrupted one.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from logging import ERROR, INFO
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from flwr_byz.app.central_evaluation import make_evaluate_fn
from flwr_byz.app.checkpoint import (
    CHECKPOINT_FILE,
    Resume,
    check_arrays,
    checkpoint_payload,
    node_map,
    restore_rng,
    restore_strategy,
    save_checkpoint,
)
from flwr_byz.app.config import (
    RunConfigError,
    check_against_nodes,
    check_run_config,
    check_run_dir,
)
from flwr_byz.app.federation import IdentityQueries, discover_nodes, identify_nodes
from flwr_byz.app.liveness import node_floor
from flwr_byz.app.observed_strategy import ObservedStrategy
from flwr_byz.app.results import (
    ResultsFile,
    RunInterruptedError,
    check_unused,
    expand_run_dir,
    recorded,
    status_line,
    status_of,
)
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
        log(INFO, "%s", status_line("failed", f"invalid run configuration: {err}"))
        raise
    try:
        run(grid, cfg, run_id=context.run_id)
    except BaseException as err:
        if isinstance(err, RunConfigError):  # output-dir in use, a bad checkpoint
            log(ERROR, "Cannot start the run: %s", err)
        if not recorded(err):  # it ended before claiming its results.json
            text = str(err).strip()
            reason = f"{type(err).__name__}: {text}" if text else type(err).__name__
            log(INFO, "%s", status_line(status_of(err), reason))
        raise


def _device(name: str) -> str:
    """The run config's ``device`` as a torch device string (``auto`` resolved)."""
    try:
        return str(resolve_device(name))
    except ValueError as err:
        raise RunConfigError(f"run-config key 'device': {err}") from err


def run(grid: Grid, cfg: dict[str, Any], run_id: int | None = None) -> dict[str, Any]:
    """Run one configured experiment on ``grid``; return the results dict.

    A fresh run writes ``results.json`` and, after every round, ``checkpoint.pt``
    into its own run directory (``output-dir``, ``{run}`` expanded). With
    ``resume`` it continues the interrupted run whose directory (or checkpoint)
    the key names, from the round after its checkpoint, in that directory.
    """
    seed = int(cfg["seed"])
    # Flower samples nodes with Python's `random`; seed it so sampling repeats.
    random.seed(seed)
    torch.manual_seed(seed)
    device = _device(str(cfg["device"]))

    # Refusals first, before the federation is waited for or anything is written.
    resume = Resume.open(cfg) if cfg["resume"] else None
    if resume is not None:
        run_dir = resume.run_dir
    else:
        run_dir = expand_run_dir(str(cfg["output-dir"]), _run_name(run_id))
        check_run_dir(run_dir, str(cfg["output-dir"]))  # a file in the way, no access
        check_unused(run_dir)

    round_timeout = float(cfg["round-timeout"])
    node_wait_timeout = float(cfg["node-wait-timeout"])
    # The first message a node gets also installs the app and starts a ClientApp
    # process: slower than a round, bounded like the node wait.
    query_timeout = min(60.0, node_wait_timeout)
    queries = IdentityQueries()  # a node that has not answered is asked again
    nodes = discover_nodes(
        grid,
        min_nodes=max(2, int(cfg["min-available-nodes"])),
        timeout=node_wait_timeout,
        query_timeout=query_timeout,
        queries=queries,
    )
    if resume is not None and queries.unanswered(nodes):
        # The checkpoint's nodes are matched by partition: ask once more.
        nodes.update(identify_nodes(grid, nodes, queries, query_timeout))
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

    node_ids: dict[int, int] = {}  # old → new node id, for a resumed run
    if resume is not None:
        check_arrays(resume.arrays, model.state_dict(), resume.path)
        node_ids = node_map(resume.payload["nodes"], identities, resume.path)
        restore_strategy(strategy, resume.payload["strategy"], node_ids, resume.path)

    results = ResultsFile(
        run_dir,
        cfg,
        ground_truth,
        restored=None if resume is None else resume.record(node_ids),
    )
    round_log = RoundLog(results, identities, byz_nodes)
    if resume is not None:
        round_log.restore(resume.payload["log"], node_ids)

    def identify_joined(server_round: int, grid: Grid, ask: bool = True) -> None:
        # Before each round: a node that has not said who it is yet is asked again,
        # and a restarted SuperNode (a new node id) is asked, so partitions and
        # roles are in the record (and in the server-side attack).
        for nid, node in identify_nodes(
            grid, nodes, queries, query_timeout, ask=ask
        ).items():
            late = nid in nodes
            nodes[nid] = node
            byzantine = bool(
                node.byzantine
                or (node.byzantine is None and node.partition_id in byz_partitions)
            )
            if late and byzantine and nid not in byz_nodes:
                byz_nodes.append(nid)
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
    checkpoint = run_dir / CHECKPOINT_FILE
    rounds = int(cfg["num-server-rounds"])
    fault_after = int(cfg["fault-stop-after-round"])
    elapsed_before = 0.0 if resume is None else resume.elapsed
    started = time.perf_counter()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        round_log.see_model(arrays)  # did the round move the model?
        if server_round == 0 and observed.round_offset:
            return None  # a resumed episode's model: its round is on record already
        server_round += observed.round_offset
        metrics = evaluate(server_round, arrays)
        round_log.on_evaluate(server_round, metrics)
        if server_round > 0:
            # The round is complete (results.json flushed): checkpoint it.
            save_checkpoint(
                checkpoint,
                checkpoint_payload(
                    config=cfg,
                    episode=round_log.episode,
                    server_round=server_round,
                    arrays=arrays,
                    strategy=strategy,
                    nodes=identities,
                    results=results.data,
                    log=round_log.state(),
                    elapsed=elapsed_before + time.perf_counter() - started,
                ),
            )
            played = (round_log.episode - 1) * rounds + server_round
            if played == fault_after:
                raise RunInterruptedError(
                    f"fault injection: stopped after round {server_round} of episode "
                    f"{round_log.episode} (run-config key 'fault-stop-after-round' = "
                    f"{fault_after}); continue with resume = '{run_dir}'"
                )
        return metrics

    # Where to start: after the checkpoint's round, in its episode (the next one
    # when that episode was complete).
    first_episode, done = (1, 0) if resume is None else (resume.episode, resume.round)
    if done >= rounds:
        first_episode, done = first_episode + 1, 0
    stopped: NotEnoughNodesError | None = None
    try:
        with _signals_interrupt():
            if resume is not None:
                log(
                    INFO,
                    "Resuming %s after round %d of episode %d (Flower's round "
                    "counter below restarts at 1; the strategy and the clients see "
                    "the run's own round numbers)",
                    run_dir,
                    resume.round,
                    resume.episode,
                )
                # The random states of the end of that round, as the interrupted
                # run would have carried them into the next.
                restore_rng(resume.payload["rng"])
            try:
                # GAA's outer loop (Algorithm 1): every episode restarts from the
                # same θ₀; the strategy keeps its policy and credits (a new start is
                # a new episode).
                for episode in range(first_episode, int(cfg["gaa-episodes"]) + 1):
                    round_log.episode = episode
                    offset = done if episode == first_episode else 0
                    observed.round_offset = offset
                    observed.start(
                        grid=grid,
                        initial_arrays=(
                            ArrayRecord(resume.arrays)
                            if offset and resume is not None
                            else initial_arrays
                        ),
                        num_rounds=rounds - offset,
                        # Each round aggregates what arrived within this many seconds.
                        timeout=round_timeout,
                        # The clients build their model from what the server's model
                        # is.
                        train_config=ConfigRecord(
                            {"seed": seed, "num-classes": num_classes}
                        ),
                        evaluate_config=ConfigRecord({"num-classes": num_classes}),
                        evaluate_fn=evaluate_fn,
                    )
            except NotEnoughNodesError as err:
                stopped = err
            observed.round_offset = 0
            # Identity answers that came in during the last round.
            identify_joined(0, grid, ask=False)
            summary = round_log.summary(
                strategy=strategy,
                detection_k=int(cfg["detection-k"]) or len(byz_nodes),
                total_time=elapsed_before + time.perf_counter() - started,
            )
            if stopped is not None:
                last = results.data["rounds"][-1]  # round 0: the initial model
                episode_text = (
                    f" of episode {last.get('episode', 1)}"
                    if int(cfg["gaa-episodes"]) > 1
                    else ""
                )
                summary["stopped"] = (
                    f"after round {last['round']}{episode_text}: {stopped}"
                )
                # The summary of the rounds so far is kept; the run is
                # "interrupted" (resume it once the nodes are back).
                results.data["summary"] = summary
                log(ERROR, "Run stopped %s", summary["stopped"])
                log(ERROR, "results (rounds so far): %s", results.path)
                raise stopped
            results.finish(summary)
    except BaseException as err:
        results.stop(err)
        if err is not stopped:
            log(ERROR, "Run %s (%s): %s", results.status, results.path, err)
        raise
    for line in round_log.summary_lines(summary, results.path):
        log(INFO, "%s", line)
    return results.data


def _run_name(run_id: int | None) -> str:
    """What ``{run}`` in ``output-dir`` becomes: UTC date-time and run id."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{run_id if run_id is not None else uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM unwinds the run (results.json: ``interrupted``) where nothing else
    handles it; Flower's own handlers, where installed, already unwind it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise RunInterruptedError(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
