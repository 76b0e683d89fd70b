"""The ServerApp's run, as a library call: run config → data, model, strategy →
rounds → results.

:func:`serve` is what ``server/server_app.py``'s ``@app.main()`` calls;
:func:`run_server` runs one checked run config on any Flower ``Grid`` (a test can
hand it its own) and returns the run's ``results.json`` record.

Every run-config key is checked before round 1; a bad value stops the run with
one message that names the key and what is allowed.

Liveness: every round waits at most ``round-timeout`` seconds for replies (the
sampled nodes without one are recorded as missing, by node id and reason),
samples from the nodes connected at that moment, and waits at most
``node-wait-timeout`` seconds for ``min-available-nodes`` of them; past that the
run stops with a message (kept in ``results.json``) instead of waiting forever.

Each run writes into a run directory of its own (``results.json``, and
``checkpoint.pt`` after every round); ``resume`` continues an interrupted one.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid

from flwr_byz.app.central_evaluation import make_evaluate_fn
from flwr_byz.app.checkpoint import (
    CHECKPOINT_FILE,
    Resume,
    RunCheckpoint,
    check_arrays,
    node_map,
    restore_rng,
    restore_strategy,
)
from flwr_byz.app.config import (
    RunConfigError,
    check_run_config,
    check_run_dir,
)
from flwr_byz.app.episodes import RoundEnd, play_episodes, start_position
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
from flwr_byz.app.roster import Roster
from flwr_byz.app.round_log import RoundLog
from flwr_byz.app.strategy_factory import build_strategy
from flwr_byz.attacks import ServerSideAttack
from flwr_byz.data import dataset_shape, load_server_data
from flwr_byz.devices import resolve_device
from flwr_byz.models import build_model
from flwr_byz.strategy.sampling import NotEnoughNodesError


def serve(grid: Grid, context: Context) -> dict[str, Any]:
    """Check ``context.run_config``, run it, log one status line on failure.

    Raises
    ------
    RunConfigError
        An invalid run config, an output directory in use, a checkpoint that
        cannot continue this run.
    BaseException
        Whatever ended the run (recorded in ``results.json`` when it had one).
    """
    try:
        cfg = check_run_config(context.run_config)
    except RunConfigError as err:
        log(ERROR, "Invalid run configuration: %s", err)
        log(INFO, "%s", status_line("failed", f"invalid run configuration: {err}"))
        raise
    try:
        return run_server(grid, cfg, run_id=context.run_id)
    except BaseException as err:
        if isinstance(err, RunConfigError):  # output-dir in use, a bad checkpoint
            log(ERROR, "Cannot start the run: %s", err)
        if not recorded(err):  # it ended before claiming its results.json
            text = str(err).strip()
            reason = f"{type(err).__name__}: {text}" if text else type(err).__name__
            log(INFO, "%s", status_line(status_of(err), reason))
        raise


def run_device(name: str) -> str:
    """The run config's ``device`` as a torch device string (``auto`` resolved)."""
    try:
        return str(resolve_device(name))
    except ValueError as err:
        raise RunConfigError(f"run-config key 'device': {err}") from err


def open_run_dir(cfg: dict[str, Any], run_id: int | None) -> tuple[Path, Resume | None]:
    """The run directory, and the checkpoint to resume (``None``: a fresh run).

    Refused before anything is written: a ``resume`` checkpoint that cannot
    continue this run config, an ``output-dir`` that holds another run.
    """
    if cfg["resume"]:
        resume = Resume.open(cfg)
        return resume.run_dir, resume
    run_dir = expand_run_dir(str(cfg["output-dir"]), run_name(run_id))
    check_run_dir(run_dir, str(cfg["output-dir"]))  # a file in the way, no access
    check_unused(run_dir)
    return run_dir, None


def run_server(
    grid: Grid, cfg: dict[str, Any], run_id: int | None = None
) -> dict[str, Any]:
    """Run one checked run config on ``grid``; return the results dict.

    A fresh run writes ``results.json`` and, after every round, ``checkpoint.pt``
    into its own run directory (``output-dir``, ``{run}`` expanded). With
    ``resume`` it continues the interrupted run whose directory (or checkpoint)
    the key names, from the round after its checkpoint, in that directory.
    """
    seed = int(cfg["seed"])
    # Flower samples nodes with Python's `random`; seed it so sampling repeats.
    random.seed(seed)
    torch.manual_seed(seed)
    device = run_device(str(cfg["device"]))
    run_dir, resume = open_run_dir(cfg, run_id)

    roster = Roster.discover(grid, cfg, resuming=resume is not None)
    # One map, kept up to date by the round log as nodes join.
    identities = roster.identities
    byz_nodes = roster.byzantine_nodes
    num_features, num_classes = dataset_shape(cfg)
    server_data = load_server_data(cfg, len(identities))

    def model_factory() -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(str(cfg["model"]), num_features, num_classes)

    model = model_factory()
    initial_arrays = ArrayRecord(model.state_dict())
    evaluate = make_evaluate_fn(
        model_factory().to(device),
        server_data.test.features,
        server_data.test.labels,
    )
    strategy = build_strategy(cfg, len(identities), server_data, model_factory, device)
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
        roster.ground_truth(),
        restored=None if resume is None else resume.record(node_ids),
    )
    round_log = RoundLog(results, identities, byz_nodes)
    if resume is not None:
        round_log.restore(resume.payload["log"], node_ids)

    def identify_joined(server_round: int, grid: Grid, ask: bool = True) -> None:
        # Before each round: a node that has not said who it is yet is asked again,
        # and a restarted SuperNode (a new node id) is asked, so partitions and
        # roles are in the record (and in the server-side attack).
        for nid, partition_id, byzantine in roster.identify_joined(grid, ask=ask):
            round_log.add_node(nid, partition_id, byzantine)
            if isinstance(strategy, ServerSideAttack):
                strategy.add_node(nid, partition_id, byzantine)

    observed = ObservedStrategy(
        strategy,
        on_train=round_log.on_train,
        order_key=lambda nid: (identities.get(nid, -1), nid),
        node_wait_timeout=float(cfg["node-wait-timeout"]),
        on_configure=identify_joined,
    )
    rounds = int(cfg["num-server-rounds"])
    checkpoint = RunCheckpoint(
        run_dir / CHECKPOINT_FILE,
        cfg,
        strategy,
        identities,
        elapsed_before=0.0 if resume is None else resume.elapsed,
    )
    round_end = RoundEnd(
        observed=observed,
        evaluate=evaluate,
        round_log=round_log,
        results=results,
        checkpoint=checkpoint,
        rounds=rounds,
        fault_after=int(cfg["fault-stop-after-round"]),
        run_dir=run_dir,
    )
    stopped: NotEnoughNodesError | None = None
    try:
        with signals_interrupt():
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
                play_episodes(
                    observed,
                    grid,
                    episodes=int(cfg["gaa-episodes"]),
                    rounds=rounds,
                    start=start_position(resume, rounds),
                    initial_arrays=initial_arrays,
                    resumed_arrays=None
                    if resume is None
                    else ArrayRecord(resume.arrays),
                    round_timeout=float(cfg["round-timeout"]),
                    # The clients build their model from what the server's is.
                    train_config=ConfigRecord(
                        {"seed": seed, "num-classes": num_classes}
                    ),
                    evaluate_config=ConfigRecord({"num-classes": num_classes}),
                    round_end=round_end,
                )
            except NotEnoughNodesError as err:
                stopped = err
            # Identity answers that came in during the last round.
            identify_joined(0, grid, ask=False)
            summary = round_log.summary(
                strategy=strategy,
                detection_k=int(cfg["detection-k"]) or len(byz_nodes),
                total_time=checkpoint.elapsed(),
            )
            if stopped is not None:
                _keep_stopped_summary(results, summary, stopped, cfg)
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


def _keep_stopped_summary(
    results: ResultsFile,
    summary: dict[str, Any],
    stopped: NotEnoughNodesError,
    cfg: dict[str, Any],
) -> None:
    """A run stopped for want of nodes keeps the summary of its rounds so far
    (it is "interrupted": resume it once the nodes are back)."""
    last = results.data["rounds"][-1]  # round 0: the initial model
    episode_text = (
        f" of episode {last.get('episode', 1)}" if int(cfg["gaa-episodes"]) > 1 else ""
    )
    summary["stopped"] = f"after round {last['round']}{episode_text}: {stopped}"
    results.data["summary"] = summary
    log(ERROR, "Run stopped %s", summary["stopped"])
    log(ERROR, "results (rounds so far): %s", results.path)


def run_name(run_id: int | None) -> str:
    """What ``{run}`` in ``output-dir`` becomes: UTC date-time and run id."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{run_id if run_id is not None else uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
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
