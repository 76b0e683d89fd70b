"""What a running grid reads from its cells' logs: rounds played, an ETA, and why
a cell failed.

Every cell streams its run's log (``flwr run --stream``), in which Flower's
strategy announces each round as ``[ROUND k/R]``. The grid's work is counted in
rounds × SuperNodes, so that a 50-node cell weighs five times a 10-node one and a
40-round cell twice a 20-round one; the ETA is the work left at the rate the grid
has done work so far (all cells running at once together).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

_ROUND = re.compile(r"\[ROUND (\d+)/(\d+)\]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LOG_ERROR = re.compile(r"^ERROR\s*:\s*(.+)$")
# Flower's own wrap-up around the app's error: not the reason.
_NOT_REASONS = ("Simulation raised an exception", "Exit Code:")
_EXCEPTION = re.compile(
    r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit)\b(?::.*)?$"
)
_BOX = re.compile(r"^│\s?(.*?)\s*│$")
_MAX_REASON = 1000


def round_started(line: str) -> tuple[int, int] | None:
    """``(k, R)`` when ``line`` announces round k of R, else None."""
    match = _ROUND.search(line)
    return (int(match.group(1)), int(match.group(2))) if match else None


def failure_reason(log: str) -> str:
    """The app's own words on why a run failed, found in its log.

    In order: the ERROR lines the ServerApp logged (``Invalid run configuration:
    ...``, ``Run interrupted (...): ...``), else the last exception line of a
    traceback, else the ``flwr`` command's error box, else the log's last line.
    """
    lines = [_ANSI.sub("", line).strip() for line in log.splitlines()]
    errors = []
    for line in lines:
        match = _LOG_ERROR.match(line)
        if match and not match.group(1).startswith(_NOT_REASONS):
            errors.append(match.group(1))
    found = "; ".join(dict.fromkeys(errors))
    if not found:
        exceptions = [line for line in lines if _EXCEPTION.match(line)]
        found = exceptions[-1] if exceptions else ""
    if not found:
        boxed = [m.group(1) for line in lines if (m := _BOX.match(line))]
        found = " ".join(part for part in boxed if part)
    if not found:
        found = next((line for line in reversed(lines) if line), "empty log")
    return found if len(found) <= _MAX_REASON else found[: _MAX_REASON - 1] + "…"


def duration(seconds: float) -> str:
    """``1h05m`` or ``3m07s``."""
    minutes, secs = divmod(int(seconds), 60)
    if minutes >= 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{minutes}m{secs:02d}s"


@dataclass
class _Cell:
    rounds: int
    supernodes: int
    done: int = 0  # rounds finished
    first: int | None = 0  # rounds done before this grid; None: not known yet
    episodes: int = 0  # episodes finished (a round number that goes down)
    last: int = 0
    finished: bool = False


class GridProgress:
    """Rounds done and left over a grid's cells, weighted by SuperNodes, and an ETA.

    Parameters
    ----------
    clock : Callable[[], float]
        Seconds (monotonic); the grid's start is the first reading.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self._cells: dict[Hashable, _Cell] = {}

    def add(
        self, key: Hashable, rounds: int, supernodes: int, resumed: bool = False
    ) -> None:
        """A cell to run: ``rounds`` rounds (every episode) on ``supernodes``; a
        ``resumed`` one starts at the round its log first announces."""
        self._cells[key] = _Cell(rounds, supernodes, first=None if resumed else 0)

    def round_started(self, key: Hashable, k: int, of: int) -> int:
        """Round ``k`` of ``of`` (of the cell's current episode) began; return the
        cell's rounds done."""
        cell = self._cells[key]
        if k < cell.last:  # the next GAA episode starts at round 1 again
            cell.episodes += 1
        cell.last = k
        done = cell.episodes * of + k - 1
        cell.done = min(max(done, cell.done), cell.rounds)
        if cell.first is None:
            cell.first = cell.done
        return cell.done

    def finish(self, key: Hashable, completed: bool = True) -> None:
        """The cell ended: it has no work left. A completed cell played all its
        rounds; a failed one only those its log announced."""
        cell = self._cells[key]
        if completed:
            cell.done = cell.rounds
        if cell.first is None:  # a resume that announced no round: credit none
            cell.first = cell.done
        cell.finished = True

    def work_done(self) -> int:
        """Rounds × SuperNodes played since the grid started (not those a resumed
        cell had played before)."""
        return sum(
            (c.done - c.first) * c.supernodes
            for c in self._cells.values()
            if c.first is not None
        )

    def work_left(self) -> int:
        """Rounds × SuperNodes still to play."""
        return sum(
            (c.rounds - c.done) * c.supernodes
            for c in self._cells.values()
            if not c.finished
        )

    def eta(self) -> float | None:
        """Seconds until every cell is done at the rate so far; None before any
        round is done."""
        done = self.work_done()
        if done <= 0:
            return None
        return (self._clock() - self._start) * self.work_left() / done

    def eta_text(self) -> str:
        """``, ETA 3m07s`` or ``""``."""
        eta = self.eta()
        return "" if eta is None else f", ETA {duration(eta)}"
