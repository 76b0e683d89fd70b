"""Run a grid's cells through Flower's simulation engine, several at a time.

Each cell is ``flwr run <app> --stream`` against a private SuperLink on free ports
(:class:`~flwr_byz.deploy.local_superlink.LocalSuperLink`), with the cell's
values as run-config overrides and its number of SuperNodes as the run's
federation size; its log streams into ``<cell>/flwr-run.log`` and its rounds into
the grid's progress lines.

Concurrency (``jobs``): one SuperLink per worker, each running its cells one
after another. One Flower 1.42 SuperLink would accept several runs at once (its
SuperExec launches every pending run, each simulation starts its own Ray
instance, each run keeps its own federation config), but runs that share a
SuperLink share its ``FLWR_HOME``, and Flower installs the app there per run:
a second run that finds the app's folder already created returns at once, while
the first may still be copying files into it. Separate SuperLinks (separate
homes) cannot race. Each cell's simulation is bounded to its share of the CPUs
(Flower's ``init-args-num-cpus``; each ClientApp actor keeps Flower's default of
2 CPUs, so the threads a client trains with, and its results, do not depend on
``jobs``).

On a Ray cluster (``ray_address``): every cell's simulation joins that cluster
instead of starting a Ray instance of its own. Flower's Ray backend calls
``ray.init()`` without an address, and Ray then connects to ``RAY_ADDRESS`` from
the environment, which the SuperLink passes on to the simulation it starts
(Flower 1.42's federation config has no ``init-args-address``: its
``--federation-config`` keys are the fields of a fixed ``SimulationConfig``).
The cluster decides the CPUs (``ray.init`` refuses ``num_cpus`` with an
address), and Flower sizes each run's pool of ClientApp actors to the whole
cluster, so cells run one after another there (see :func:`check_cluster_jobs`).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from flwr.supercore.utils import simulation_config_from_json

from flwr_byz.app.checkpoint import CHECKPOINT_FILE
from flwr_byz.app.results import RESULTS_FILE
from flwr_byz.deploy.local_superlink import LocalSuperLink
from flwr_byz.deploy.processes import stop_processes
from flwr_byz.experiments.grid import (
    Cell,
    GridSpec,
    cell_overrides,
    check_grid,
    finished,
)
from flwr_byz.experiments.grid_progress import (
    GridProgress,
    duration,
    failure_reason,
    round_started,
)

#: CPUs of one ClientApp actor (Flower's default ``client-resources-num-cpus``):
#: a simulation bounded below it could start no client at all.
MIN_CELL_CPUS = 2
LOG_FILE = "flwr-run.log"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_jobs() -> int:
    """Cells run at once by default: one per ``MIN_CELL_CPUS`` CPUs, at least 1."""
    return max(1, available_cpus() // MIN_CELL_CPUS)


def cpus_per_cell(jobs: int) -> int:
    """CPUs of each cell's simulation when ``jobs`` cells run at once."""
    return max(MIN_CELL_CPUS, available_cpus() // max(jobs, 1))


#: Federation-config keys the grid sets itself (``--supernodes``).
_GRID_FEDERATION_KEYS = frozenset({"num-supernodes"})
#: What ``ray.init`` refuses when it connects to an existing cluster.
_NOT_ON_A_CLUSTER = frozenset({"init-args-num-cpus", "init-args-num-gpus"})


def check_federation_config(
    federation_config: Mapping[str, Any], ray_address: str | None = None
) -> None:
    """Check the federation-config keys given for every cell as ``flwr run``
    would (Flower's own ``SimulationConfig``: known keys, value types).

    Raises
    ------
    ValueError
        For an unknown key or a wrong value, ``num-supernodes`` (the grid's
        ``supernodes``), or Ray's resources with ``ray_address`` (the cluster
        has its own).
    """
    for key in federation_config:
        if key in _GRID_FEDERATION_KEYS:
            raise ValueError(
                f"federation config {key!r}: the grid sets it (use --supernodes "
                "or the grid's 'supernodes')"
            )
        if ray_address is not None and key in _NOT_ON_A_CLUSTER:
            raise ValueError(
                f"federation config {key!r} with --ray-address: the cluster's "
                "nodes have their resources ('ray start --num-cpus/--num-gpus'), "
                "and ray.init refuses them when it joins a cluster"
            )
    try:
        simulation_config_from_json(
            {key.replace("-", "_"): value for key, value in federation_config.items()}
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"federation config: {err}") from err


def check_cluster_jobs(jobs: int) -> None:
    """Refuse more than one cell at a time on a Ray cluster.

    Flower sizes a run's pool of ClientApp actors from the whole cluster's
    resources (``pool_size_from_resources``), and an actor keeps its CPUs until
    its run ends. Two runs at once each create a pool the cluster cannot hold:
    a client message sent to one of its pending actors waits for the other run
    to end (so the second cell gains nothing), and two pools created
    interleaved wait for each other for ever. One cell at a time uses the whole
    cluster.

    Raises
    ------
    ValueError
        When ``jobs`` is above 1.
    """
    if jobs > 1:
        raise ValueError(
            f"--jobs {jobs} with --ray-address: every cell's ClientApp actors fill "
            "the whole cluster (Flower sizes the pool from the cluster's CPUs), so "
            "cells sharing it would wait on each other's actors; they run one at "
            "a time, each on every node (leave --jobs out, or 1)"
        )


class GridError(RuntimeError):
    """Cells of the grid failed; the message names each, with its app's reason."""


@dataclass
class _Running:
    number: int
    cell: Cell
    path: Path
    process: subprocess.Popen[bytes]
    log: BinaryIO
    log_start: int
    slot: int
    started: float
    last_print: float
    pending: bytes = b""
    rounds_done: int = 0


@dataclass
class _Runner:
    """The event loop of one grid run: start cells in free slots, read their logs,
    end them; everything it started is stopped when it leaves."""

    app_dir: Path
    total: int
    jobs: int
    echo: bool
    progress_every: float
    stack: contextlib.ExitStack
    ray_address: str | None = None
    federation_config: Mapping[str, Any] = field(default_factory=dict)
    progress: GridProgress = field(default_factory=GridProgress)
    links: dict[int, LocalSuperLink] = field(default_factory=dict)
    running: dict[int, _Running] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    ended: int = 0
    todo: int = 0

    def say(self, text: str) -> None:
        if self.echo:
            print(text, flush=True)

    def run(self, todo: Sequence[tuple[int, Cell, Path]]) -> None:
        self.todo = len(todo)
        for number, cell, path in todo:
            resumed = (path.parent / CHECKPOINT_FILE).exists()
            self.progress.add(number, cell.rounds, cell.supernodes, resumed)
        waiting = list(todo)
        free = list(range(min(self.jobs, len(todo))))
        with selectors.DefaultSelector() as selector:
            try:
                while waiting or self.running:
                    # A failure stops new starts (it is often every cell's), not
                    # the cells already running: their results are kept.
                    while waiting and free and not self.failures:
                        slot = free.pop(0)
                        item = self._start(*waiting.pop(0), slot)
                        selector.register(
                            item.process.stdout, selectors.EVENT_READ, item
                        )
                    if not self.running:
                        break
                    for key, _ in selector.select(timeout=1.0):
                        item = key.data
                        if not self._read(item):
                            selector.unregister(key.fileobj)
                            self._end(item)
                            free.append(item.slot)
            finally:
                self._stop_running()

    def _link(self, slot: int) -> LocalSuperLink:
        if slot not in self.links:
            link = LocalSuperLink()
            if self.ray_address is not None:
                # Flower's Ray backend calls ray.init() without an address: Ray
                # then joins the cluster named here (inherited by the SuperExec
                # and the simulation). The app's directory goes on the actors'
                # PYTHONPATH (Flower passes the simulation's sys.path on to
                # them), so nodes with the repository at the same path import
                # the ClientApp, which Flower installed in the head's private
                # FLWR_HOME only.
                link.env["RAY_ADDRESS"] = self.ray_address
                link.env["PYTHONPATH"] = os.pathsep.join(
                    filter(
                        None,
                        [str(self.app_dir.resolve()), os.environ.get("PYTHONPATH")],
                    )
                )
            # Stopped with the grid even when interrupted while it starts.
            self.stack.callback(link.stop)
            self.links[slot] = link.start()
        return self.links[slot]

    def _start(self, number: int, cell: Cell, path: Path, slot: int) -> _Running:
        link = self._link(slot)
        path.parent.mkdir(parents=True, exist_ok=True)
        overrides = cell_overrides(cell.config, path.parent)
        resumed = "resume" in overrides
        log = (path.parent / LOG_FILE).open("ab")
        log_start = log.tell()
        command = link.run_command(
            self.app_dir,
            overrides,
            num_supernodes=cell.supernodes,
            federation_config=self._federation_config(),
        )
        process = subprocess.Popen(
            command,
            env=link.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        now = time.monotonic()
        item = _Running(number, cell, path, process, log, log_start, slot, now, now)
        self.running[number] = item
        again = ", resumed from its checkpoint" if resumed else ""
        self.say(
            f"[{number}/{self.total}] {cell.name} ({self.ended} of {self.todo} to "
            f"run done{self.progress.eta_text()}{again})"
        )
        return item

    def _federation_config(self) -> dict[str, Any]:
        """Flower's simulation settings of every cell: its share of this machine's
        CPUs for a private Ray instance, nothing on a cluster (it has its own);
        the user's keys on top."""
        own = (
            {} if self.ray_address else {"init-args-num-cpus": cpus_per_cell(self.jobs)}
        )
        return {**own, **self.federation_config}

    def _read(self, item: _Running) -> bool:
        """Take what the cell's log has; False at its end."""
        assert item.process.stdout is not None
        chunk = os.read(item.process.stdout.fileno(), 65536)
        if not chunk:
            return False
        item.log.write(chunk)
        item.log.flush()
        *lines, item.pending = (item.pending + chunk).split(b"\n")
        for line in lines:
            found = round_started(line.decode(errors="replace"))
            if found is None:
                continue
            item.rounds_done = self.progress.round_started(item.number, *found)
            now = time.monotonic()
            if now - item.last_print >= self.progress_every:
                item.last_print = now
                self.say(
                    f"[{item.number}/{self.total}] {item.cell.name}: round "
                    f"{item.rounds_done + 1}/{item.cell.rounds}"
                    f"{self.progress.eta_text()}"
                )
        return True

    def _end(self, item: _Running) -> None:
        code = item.process.wait()
        item.log.close()
        assert item.process.stdout is not None
        item.process.stdout.close()
        del self.running[item.number]
        self.ended += 1
        completed = code == 0 and finished(item.path)
        self.progress.finish(item.number, completed)
        took = duration(time.monotonic() - item.started)
        head = f"[{item.number}/{self.total}] {item.cell.name}"
        if completed:
            self.say(f"{head}: done in {took}{self.progress.eta_text()}")
            return
        log_path = item.path.parent / LOG_FILE
        with log_path.open("rb") as handle:
            handle.seek(item.log_start)
            reason = failure_reason(handle.read().decode(errors="replace"))
        failure = f"cell {item.cell.describe()} failed: {reason} (log: {log_path})"
        self.failures.append(failure)
        self.say(f"{head}: FAILED after {took}: {reason} (log: {log_path})")

    def _stop_running(self) -> None:
        """Stop the ``flwr run`` commands still streaming (by PID); their runs end
        with their SuperLinks (the caller's exit stack)."""
        for item in list(self.running.values()):
            stop_processes([item.process], timeout=10)
            item.log.close()
            if item.process.stdout is not None:
                item.process.stdout.close()
        self.running.clear()


def run_grid(
    spec: GridSpec,
    app_dir: str | Path,
    out_dir: str | Path,
    echo: bool = True,
    jobs: int = 1,
    progress_every: float = 30.0,
    ray_address: str | None = None,
    federation_config: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Run every cell (skipping finished ones); return their ``results.json`` paths.

    Parameters
    ----------
    spec : GridSpec
        The grid; every cell is checked before the first one runs.
    app_dir : str | Path
        The Flower app (this repository).
    out_dir : str | Path
        One folder per cell below it.
    echo : bool
        Print a line per cell started and ended, and round progress.
    jobs : int
        Cells run at once, each on its own private SuperLink.
    progress_every : float
        Seconds between two round-progress lines of one cell (0: every round).
    ray_address : str | None
        An existing Ray cluster (``auto``, ``HOST:PORT``) that runs every cell's
        ClientApps, one cell at a time; None: each cell starts its own Ray
        instance on this machine.
    federation_config : Mapping[str, Any] | None
        Flower's ``--federation-config`` keys for every cell (for instance
        ``client-resources-num-gpus``), over the grid's own.

    Raises
    ------
    ValueError
        For an invalid cell or federation config, or ``jobs`` above 1 on a
        cluster.
    GridError
        When cells failed: no new cell starts after a failure, the running ones
        finish and keep their results; the message names every failed cell with
        its app's own error.
    """
    out_dir = Path(out_dir).resolve()
    federation_config = dict(federation_config or {})
    check_federation_config(federation_config, ray_address)
    if ray_address is not None:
        check_cluster_jobs(jobs)
    cells = check_grid(spec)
    paths = [out_dir / cell.name / RESULTS_FILE for cell in cells]
    todo = [
        (number, cell, path)
        for number, (cell, path) in enumerate(zip(cells, paths, strict=True), 1)
        if not finished(path)
    ]
    if echo:
        where = (
            f"on the Ray cluster at {ray_address}"
            if ray_address is not None
            else f"{cpus_per_cell(jobs)} CPUs each"
        )
        print(
            f"flwr-byz grid: {len(cells)} cells, {len(todo)} to run, "
            f"{min(jobs, max(len(todo), 1))} at a time ({where})",
            flush=True,
        )
    with contextlib.ExitStack() as stack:
        runner = _Runner(
            Path(app_dir),
            len(cells),
            jobs,
            echo,
            progress_every,
            stack=stack,
            ray_address=ray_address,
            federation_config=federation_config,
        )
        runner.run(todo)
    if runner.failures:
        raise GridError("\n".join(runner.failures))
    return paths
