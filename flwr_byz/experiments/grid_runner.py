"""Run a grid's cells through Flower's simulation engine, several at a time.

Each cell is ``flwr run <app> --stream`` against a private SuperLink on free ports
(:class:`~flwr_byz.experiments.local_superlink.LocalSuperLink`), with the cell's
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
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from flwr_byz.app.checkpoint import CHECKPOINT_FILE
from flwr_byz.app.results import RESULTS_FILE
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
from flwr_byz.experiments.local_superlink import LocalSuperLink

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
            federation_config={"init-args-num-cpus": cpus_per_cell(self.jobs)},
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
            if item.process.poll() is None:
                item.process.terminate()
                try:
                    item.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    item.process.kill()
                    item.process.wait(timeout=10)
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

    Raises
    ------
    GridError
        When cells failed: no new cell starts after a failure, the running ones
        finish and keep their results; the message names every failed cell with
        its app's own error.
    """
    out_dir = Path(out_dir).resolve()
    cells = check_grid(spec)
    paths = [out_dir / cell.name / RESULTS_FILE for cell in cells]
    todo = [
        (number, cell, path)
        for number, (cell, path) in enumerate(zip(cells, paths, strict=True), 1)
        if not finished(path)
    ]
    if echo:
        print(
            f"flwr-byz grid: {len(cells)} cells, {len(todo)} to run, "
            f"{min(jobs, max(len(todo), 1))} at a time "
            f"({cpus_per_cell(jobs)} CPUs each)",
            flush=True,
        )
    with contextlib.ExitStack() as stack:
        runner = _Runner(
            Path(app_dir), len(cells), jobs, echo, progress_every, stack=stack
        )
        runner.run(todo)
    if runner.failures:
        raise GridError("\n".join(runner.failures))
    return paths
