"""No process outlives an interrupted grid (slow: a real private SuperLink)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_sigterm_stops_the_grid_and_everything_it_started(tmp_path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
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
        "--rounds",
        "50",
        "--out",
        str(tmp_path / "out"),
    ]
    with log.open("w") as handle:
        grid = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        # Wait until the cell's simulation runs under the grid's private SuperLink.
        while time.monotonic() < deadline and len(_processes_under(str(tmp))) < 3:
            assert grid.poll() is None, log.read_text()
            time.sleep(0.5)
        time.sleep(3)
        assert _processes_under(str(tmp)), "the grid never started its SuperLink"
        grid.send_signal(signal.SIGTERM)
        assert grid.wait(timeout=60) == 130, log.read_text()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _processes_under(str(tmp)):
            time.sleep(0.5)
        assert _processes_under(str(tmp)) == [], "processes outlived the grid"
        assert "interrupted" in log.read_text()
    finally:
        if grid.poll() is None:
            grid.kill()
        for pid in _processes_under(str(tmp)):
            os.kill(pid, signal.SIGKILL)
