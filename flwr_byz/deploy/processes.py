"""Ports and processes of a local SuperLink or deployment: the one helper.

Free ports (:func:`free_port`, :func:`port_is_free`), starting a process in a
session of its own (:func:`spawn`), waiting until it listens
(:func:`wait_for_port`, :func:`wait_until_healthy`), and ending it with all it
started, even where it has exited (:func:`stop_processes`, :func:`stop_pids`,
:func:`kill_now`). Process lookups read Linux ``/proc``; elsewhere they find
nothing.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import httpx

__all__ = [
    "TAG_VARIABLE",
    "descendants",
    "end_home",
    "free_port",
    "home_sessions",
    "is_alive",
    "kill_now",
    "kill_spawned",
    "log_tail",
    "port_is_free",
    "processes_with_home",
    "related",
    "session_of",
    "spawn",
    "spawned",
    "stop_pids",
    "stop_processes",
    "wait_for_port",
    "wait_until_healthy",
]

# Its own stream: drawing ports must not move the seeded global `random` state.
_PORT_DRAWS = random.Random()
# Below Linux's default ephemeral range, above Ray's default worker ports (10002 to
# 19999) and the ports the Ray-cluster test scans from 20000.
_FIRST_PORT = 21000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where unknown)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, drawn below the kernel's
    ephemeral range.

    The caller binds it later, in another process. A port of the ephemeral range
    (where ``bind(port=0)`` and every outgoing connection get theirs) can be
    taken in between by any process on the machine (CI saw a SuperNode's port
    go to a parallel test's connection); one below it only by a process that
    names it.
    """
    low, high = _FIRST_PORT, _ephemeral_low()
    if high - low >= 1000:
        for _ in range(200):
            port = _PORT_DRAWS.randrange(low, high)
            if port_is_free(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a TCP listener could bind ``port`` on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


#: The environment variable :func:`spawn` gives each process it starts: a token of
#: that process, inherited by everything it starts (a new session does not drop it).
TAG_VARIABLE = "FLWR_BYZ_PROCESS_TAG"

# The tag of each process spawn() started, by PID (until stop_processes ends it).
_TAGS: dict[int, str] = {}


def spawn(
    command: Sequence[str],
    env: Mapping[str, str],
    cwd: str | Path | None,
    log_file: Path,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in ``cwd`` (``None``: this process's), in a session of
    its own, stdout and stderr to ``log_file``.

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


def log_tail(log_file: Path | None, lines: int = 15) -> str:
    """``"; its last output, from <log_file>:"`` and its last ``lines`` lines
    (``""`` where there is no such file): the end of an error message."""
    if log_file is None or not log_file.exists():
        return ""
    tail = log_file.read_text(errors="replace").strip().splitlines()[-lines:]
    return f"; its last output, from {log_file}:\n" + "\n".join(tail)


def wait_for_port(
    port: int,
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = 60.0,
    log_file: Path | None = None,
) -> None:
    """Return once a TCP connection to ``127.0.0.1:port`` is accepted.

    :class:`RuntimeError` if ``process`` exits first, :class:`TimeoutError` after
    ``timeout`` seconds; either names the last lines of ``log_file``.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{process.args[0]} exited with code {process.returncode} before "
                f"it listened on port {port}" + log_tail(log_file)
            )
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"nothing listened on port {port} within {timeout:g} s"
                + log_tail(log_file)
            )
        time.sleep(0.1)


def wait_until_healthy(
    process: subprocess.Popen[bytes],
    url: str,
    timeout: float = 60.0,
    verify: ssl.SSLContext | bool = True,
) -> bool:
    """Poll ``GET url`` until it answers 2xx: True then, False once ``process``
    has exited (it did not start). :class:`TimeoutError` after ``timeout``
    seconds (``process`` is left running). ``verify``: httpx's TLS check."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, verify=verify, timeout=0.5).is_success:
                return True
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:g} s")


def _stat_fields(pid: int | str) -> list[str]:
    """``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, session..."""
    # The command name may hold spaces and parentheses: split after it.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def session_of(pid: int) -> int | None:
    """The session id of ``pid`` (from ``/proc/<pid>/stat``), or None."""
    try:
        return int(_stat_fields(pid)[3])
    except (OSError, ValueError, IndexError):
        return None


def _pids() -> list[int]:
    """The live PIDs but this process's (Linux ``/proc``; else empty)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    names = [e.name for e in proc.iterdir()]
    return [int(n) for n in names if n.isdigit() and int(n) != os.getpid()]


def _environ(pid: int) -> list[bytes]:
    """``pid``'s environment entries (``[]`` where it cannot be read)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def processes_with_home(
    flwr_home: str | Path, sessions: Iterable[int] = ()
) -> list[int]:
    """PIDs of the processes a SuperLink with ``flwr_home`` started (Linux ``/proc``;
    an empty list where it is not available).

    Those whose environment has ``FLWR_HOME=flwr_home``, and every process in their
    sessions and in ``sessions``: Ray's agents rewrite their environment area with
    their process title, so they are found through the session of the SuperExec
    that started them (which may already be gone: pass the sessions
    :func:`home_sessions` saw while it ran).
    """
    wanted = f"FLWR_HOME={flwr_home}".encode()
    pids = _pids()
    by_pid = {pid: session_of(pid) for pid in pids}
    found = {pid for pid in pids if wanted in _environ(pid)}
    ours = ({by_pid[pid] for pid in found} | set(sessions)) - {
        None,
        session_of(os.getpid()),
    }
    found |= {pid for pid in pids if by_pid.get(pid) in ours}
    return sorted(found)


def home_sessions(flwr_home: str | Path) -> set[int]:
    """The sessions of :func:`processes_with_home` now."""
    found = {session_of(pid) for pid in processes_with_home(flwr_home)}
    return found - {None, session_of(os.getpid())}


def end_home(
    flwr_home: str | Path, sessions: Iterable[int] = (), timeout: float = 10.0
) -> None:
    """SIGKILL every process of :func:`processes_with_home`, scanning again until
    none runs (or ``timeout`` seconds): a process started while the others die
    (Ray starts agents on its way down) is in one of their sessions, and the next
    scan finds it."""
    sessions = set(sessions)
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in processes_with_home(flwr_home, sessions) if is_alive(p)]
        if not pids or time.monotonic() > deadline:
            return
        sessions |= {s for s in map(session_of, pids) if s is not None}
        kill_now(pids=pids)
        time.sleep(0.05)


def related(pid: int) -> set[int]:
    """Live processes that ``pid`` (a :func:`spawn` leader, alive or not) started:
    its descendants, the members of its process group and session, and those
    carrying its :func:`spawn` tag, with their descendants (Linux ``/proc``;
    elsewhere none)."""
    children = _children()
    found = set(descendants(pid, children))
    tag = _TAGS.get(pid)
    wanted = f"{TAG_VARIABLE}={tag}".encode() if tag else None
    for other in _pids():
        if other == pid or other in found:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(other)
            member = pid in (int(fields[2]), int(fields[3]))  # pgrp, session
            if member or (wanted is not None and wanted in _environ(other)):
                found.add(other)
    for other in list(found):
        found.update(descendants(other, children))
    return {other for other in found if is_alive(other)}


def _children() -> dict[int, list[int]]:
    """The live processes' children, by parent PID (Linux ``/proc``; else empty)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        with contextlib.suppress(OSError, ValueError, IndexError):
            children.setdefault(int(_stat_fields(pid)[1]), []).append(pid)
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


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return _stat_fields(pid)[0] != "Z"
    return True


def _signal_leader(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """``sig`` to the process group ``process`` leads (a :func:`spawn` leader's
    even after it exited), or to ``process`` alone while it runs and leads none."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if process.pid in _TAGS or os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, sig)
        elif process.poll() is None:
            process.send_signal(sig)


def stop_processes(
    processes: Sequence[subprocess.Popen[bytes]], timeout: float = 15.0
) -> None:
    """Stop ``processes`` and everything they started, by PID.

    A process of :func:`spawn` leads its own process group
    (``start_new_session``): the signal goes to the group; to the process alone
    otherwise. What they started is collected first (:func:`related`):
    descendants, group and session members, and, for processes of :func:`spawn`,
    every process with their tag, because Flower's SuperExec starts in a new
    session of its own and would escape a group signal, and outlives a SuperLink
    that exited before this call. SIGTERM lets the SuperNodes deregister and the
    SuperLink stop its SuperExec; whatever is still alive after ``timeout``
    seconds gets SIGKILL.
    """
    leaders = [p for p in processes if p.poll() is None]
    others = {d for p in processes for d in related(p.pid)}
    for process in leaders:
        _signal_leader(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in leaders:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    _terminate(others, deadline)
    for process in leaders:
        _signal_leader(process, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
    _kill(others)
    _forget(processes)


def kill_now(
    processes: Sequence[subprocess.Popen[bytes]] = (), pids: Iterable[int] = ()
) -> None:
    """SIGKILL, at once, to ``processes`` with everything they started
    (:func:`related`) and to ``pids``, like a machine that dies: nothing gets
    the chance to deregister or write a last word. Waits for ``processes``."""
    victims = set(pids) | {d for p in processes for d in related(p.pid)}
    for process in processes:
        _signal_leader(process, signal.SIGKILL)
    _kill(victims)
    for process in processes:
        process.wait(timeout=10)
    _forget(processes)


def spawned() -> set[int]:
    """PIDs of the :func:`spawn` leaders of this process not yet stopped (alive or
    not: what they started may still run)."""
    return set(_TAGS)


def kill_spawned(leaders: Iterable[int]) -> set[int]:
    """SIGKILL, at once, to the :func:`spawn` leaders ``leaders`` and everything
    they started (:func:`related`): the last resort where a caller's own clean-up
    was cut short (a time limit that fired inside :func:`stop_processes`).
    Returns the PIDs that were still running."""
    victims = set()
    for pid in leaders:
        victims |= related(pid) | ({pid} if is_alive(pid) else set())
        _TAGS.pop(pid, None)
    kill_now(pids=victims)
    return victims


def _forget(processes: Sequence[subprocess.Popen[bytes]]) -> None:
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
    while time.monotonic() < deadline and any(is_alive(pid) for pid in pids):
        time.sleep(0.1)


def _terminate(pids: set[int], deadline: float) -> None:
    """SIGTERM to the live ``pids``; wait until they are gone or ``deadline``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if is_alive(pid):
                os.kill(pid, signal.SIGTERM)
    while time.monotonic() < deadline and any(is_alive(pid) for pid in pids):
        time.sleep(0.1)


def _kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)
