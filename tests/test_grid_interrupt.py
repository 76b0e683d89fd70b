"""No process outlives an interrupted grid (slow: a real private SuperLink)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from flwr_byz.deploy.processes import kill_now, session_of

REPO = Path(__file__).resolve().parents[1]


def _processes_under(home_prefix: str) -> list[int]:
    """PIDs whose environment has FLWR_HOME inside ``home_prefix``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(v.startswith(f"FLWR_HOME={home_prefix}".encode()) for v in env):
            found.append(int(entry.name))
    return found


def _in_sessions(sessions: set[int]) -> list[int]:
    """PIDs in ``sessions`` (Ray's agents hide their environment behind their
    process title, so they are followed through their session)."""
    return [
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit() and session_of(int(e.name)) in sessions
    ]


def _homes_with(command: bytes, home_prefix: str) -> set[bytes]:
    """The FLWR_HOMEs (inside ``home_prefix``) of processes running ``command``."""
    homes = set()
    for pid in _processes_under(home_prefix):
        if command in _cmdline(pid):
            with contextlib.suppress(OSError):
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                homes |= {v for v in env if v.startswith(b"FLWR_HOME=")}
    return homes


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _described(pids: list[int]) -> list[str]:
    """Each PID with its state, session and command line (for a failure)."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "gone"
        command = _cmdline(pid).replace(b"\0", b" ").decode(errors="replace")
        out.append(f"{pid} [{state}, session {session_of(pid)}] {command[:160]}")
    return out


@pytest.mark.slow
def test_sigterm_stops_the_grid_and_everything_it_started(tmp_path) -> None:
    # A short TMPDIR: Ray's socket paths under it must stay below 108 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="fbg", dir="/tmp"))
    log = tmp_path / "grid.log"
    env = {**os.environ, "TMPDIR": str(tmp)}
    command = [
        sys.executable,
        "-m",
        "flwr_byz.experiments.cli",
        "grid",
        "--strategies",
        "faba",
        "--attacks",
        "sign-flip",
        "--fractions",
        "0.3",
        "--seeds",
        "0,1",
        "--jobs",
        "2",
        "--rounds",
        "1000",
        "--out",
        str(tmp_path / "out"),
    ]
    with log.open("w") as handle:
        grid = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    sessions: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        # Wait until both cells' simulations run under the grid's two private
        # SuperLinks (--jobs 2), Ray's agents included (they start sessions of
        # their own).
        while time.monotonic() < deadline and (
            len(_homes_with(b"flower-superlink", str(tmp))) < 2
            or not any(b"Agent" in _cmdline(pid) for pid in _processes_under(str(tmp)))
        ):
            assert grid.poll() is None, log.read_text()
            time.sleep(0.5)
        assert len(_homes_with(b"flower-superlink", str(tmp))) == 2, log.read_text()
        time.sleep(2)
        started = _processes_under(str(tmp))
        assert started, "the grid never started its SuperLink"
        sessions = {session_of(pid) for pid in started} - {
            None,
            session_of(os.getpid()),
        }
        grid.send_signal(signal.SIGTERM)
        assert grid.wait(timeout=60) == 130, log.read_text()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _in_sessions(sessions):
            time.sleep(0.5)
        left = _processes_under(str(tmp)) + _in_sessions(sessions)
        assert left == [], f"processes outlived the grid: {_described(left)}"
        assert "interrupted" in log.read_text()
    finally:
        kill_now([grid], _processes_under(str(tmp)) + _in_sessions(sessions))
        shutil.rmtree(tmp, ignore_errors=True)
