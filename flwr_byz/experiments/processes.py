"""Stop the processes a local SuperLink or deployment started, and their children."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (Linux ``/proc``; else ``[]``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may hold spaces and parentheses: split after it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; its parent just has not reaped it yet.
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def stop_processes(
    processes: Sequence[subprocess.Popen[bytes]], timeout: float = 15.0
) -> None:
    """Stop ``processes`` and everything they started, by PID.

    Each process leads its own process group (``start_new_session``); its
    descendants are collected first, because Flower's SuperExec starts in a new
    session of its own and would escape a group signal. SIGTERM lets the
    SuperNodes deregister and the SuperLink stop its SuperExec; whatever is still
    alive after ``timeout`` seconds gets SIGKILL.
    """
    leaders = [p for p in processes if p.poll() is None]
    others = {d for p in leaders for d in descendants(p.pid)}
    for process in leaders:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in leaders:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    _terminate(others, deadline)
    for process in leaders:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
    _kill(others)


def stop_pids(pids: Iterable[int], timeout: float = 15.0) -> None:
    """Stop the processes ``pids`` (not their descendants): SIGTERM, and SIGKILL
    for those still alive after ``timeout`` seconds; return when all are gone."""
    pids = set(pids)
    _terminate(pids, time.monotonic() + timeout)
    _kill(pids)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)


def _terminate(pids: set[int], deadline: float) -> None:
    """SIGTERM to the live ``pids``; wait until they are gone or ``deadline``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)


def _kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
