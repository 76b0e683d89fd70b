"""Start processes for a local SuperLink or deployment; stop them and all they
started, even where the process that started them has exited."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

#: The environment variable :func:`spawn` gives each process it starts: a token of
#: that process, inherited by everything it starts (a new session does not drop it).
TAG_VARIABLE = "FLWR_BYZ_PROCESS_TAG"

# The tag of each process spawn() started, by PID (until stop_processes ends it).
_TAGS: dict[int, str] = {}


def spawn(
    command: Sequence[str],
    env: Mapping[str, str],
    cwd: str | Path,
    log_file: Path,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a session of its own, output to ``log_file``.

    The process leads its own process group, and it and everything it starts
    carry a tag in their environment (:data:`TAG_VARIABLE`), so
    :func:`stop_processes` finds them all, even the ones that started sessions of
    their own after this process exited.
    """
    tag = secrets.token_hex(16)
    with log_file.open("wb") as out:
        process = subprocess.Popen(
            list(command),
            env={**env, TAG_VARIABLE: tag},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    _TAGS[process.pid] = tag
    return process


def _stat_fields(pid: int | str) -> list[str]:
    """``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, session..."""
    # The command name may hold spaces and parentheses: split after it.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def related(pid: int) -> set[int]:
    """Live processes that ``pid`` (a :func:`spawn` leader, alive or not) started:
    its descendants, the members of its process group and session, and those
    carrying its :func:`spawn` tag, with their descendants (Linux ``/proc``;
    elsewhere none)."""
    children = _children()
    found = set(descendants(pid, children))
    tag = _TAGS.get(pid)
    wanted = f"{TAG_VARIABLE}={tag}".encode() if tag else None
    for entry in Path("/proc").glob("[0-9]*"):
        other = int(entry.name)
        if other in (pid, os.getpid()) or other in found:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(other)
            member = pid in (int(fields[2]), int(fields[3]))  # pgrp, session
            if member or (
                wanted is not None
                and wanted in (entry / "environ").read_bytes().split(b"\0")
            ):
                found.add(other)
    for other in list(found):
        found.update(descendants(other, children))
    return {other for other in found if _alive(other)}


def _children() -> dict[int, list[int]]:
    """The live processes' children, by parent PID (Linux ``/proc``; else empty)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(stat.parent.name)
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def descendants(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """PIDs of every live descendant of ``pid`` (Linux ``/proc``; else ``[]``);
    ``children``: a :func:`_children` map already read."""
    children = _children() if children is None else children
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

    Each process leads its own process group (``start_new_session``, as
    :func:`spawn` starts them). What they started is collected first
    (:func:`related`): descendants, group and session members, and, for processes
    of :func:`spawn`, every process with their tag, because Flower's SuperExec
    starts in a new session of its own and would escape a group signal, and
    outlives a SuperLink that exited before this call. SIGTERM lets the SuperNodes
    deregister and the SuperLink stop its SuperExec; whatever is still alive after
    ``timeout`` seconds gets SIGKILL.
    """
    leaders = [p for p in processes if p.poll() is None]
    others = {d for p in processes for d in related(p.pid)}
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
    for process in processes:
        if process.poll() is not None:
            _TAGS.pop(process.pid, None)


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
