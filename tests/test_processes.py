"""The process helper: stop_processes ends everything a spawned process started,
even after it exited; kill_now does so at once; the waits see a listener or an exit.

Real processes: a leader that starts children (in its own process group, or in a
session of their own as Flower's SuperExec does) and exits before the stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flwr_byz.deploy.processes import (
    TAG_VARIABLE,
    free_port,
    is_alive,
    kill_now,
    spawn,
    stop_processes,
    wait_for_port,
    wait_until_healthy,
)

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")

# Starts one child (a grandchild too with ESCAPE=1, both in a new session of
# their own), writes their PIDs to PIDS, then exits at once or waits (STAY=1).
LEADER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    escape = os.environ.get("ESCAPE") == "1"
    if escape:
        # A child in a new session that starts a grandchild and stays.
        code = (
            "import subprocess, sys, time;"
            f"g = subprocess.Popen({sleeper!r});"
            "print(g.pid, flush=True); time.sleep(120)"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", code],
            start_new_session=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        grandchild = int(child.stdout.readline())
        pids = [child.pid, grandchild]
    else:
        pids = [subprocess.Popen(sleeper).pid]
    with open(os.environ["PIDS"] + ".tmp", "w") as out:
        out.write(" ".join(map(str, pids)))
    os.replace(os.environ["PIDS"] + ".tmp", os.environ["PIDS"])
    if os.environ.get("STAY") == "1":
        time.sleep(120)
    """
)


def _start(tmp_path: Path, escape: bool, stay: bool):
    pids_file = tmp_path / "pids"
    env = {
        **os.environ,
        "PIDS": str(pids_file),
        "ESCAPE": "1" if escape else "0",
        "STAY": "1" if stay else "0",
    }
    leader = spawn([sys.executable, "-c", LEADER], env, tmp_path, tmp_path / "log")
    deadline = time.monotonic() + 30
    while not pids_file.exists():
        assert leader.poll() is None or pids_file.exists(), (
            tmp_path / "log"
        ).read_text()
        assert time.monotonic() < deadline, "the leader did not start its children"
        time.sleep(0.05)
    children = [int(p) for p in pids_file.read_text().split()]
    if not stay:
        leader.wait(timeout=30)
    return leader, children


@pytest.fixture
def cleanup():
    """Kill, by PID, whatever a failing test left behind."""
    pids: list[int] = []
    yield pids
    kill_now(pids=pids)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("escape", [False, True], ids=["same-group", "new-session"])
def test_children_of_an_exited_leader_are_stopped(
    tmp_path: Path, escape: bool, cleanup: list[int]
) -> None:
    leader, children = _start(tmp_path, escape=escape, stay=False)
    cleanup.extend(children)
    assert leader.returncode == 0
    assert all(is_alive(pid) for pid in children)
    # The SuperLink's case: it exited (SIGTERM from someone else) and left the
    # ServerApp process of its SuperExec running.
    stop_processes([leader], timeout=5)
    assert not [pid for pid in children if is_alive(pid)]


@pytest.mark.timeout(60)
def test_a_live_leader_and_its_escaped_children_are_stopped(
    tmp_path: Path, cleanup: list[int]
) -> None:
    leader, children = _start(tmp_path, escape=True, stay=True)
    cleanup.extend([leader.pid, *children])
    stop_processes([leader], timeout=5)
    assert leader.poll() is not None
    assert not [pid for pid in children if is_alive(pid)]


def test_spawned_processes_carry_their_own_tag(tmp_path: Path) -> None:
    code = f"import os; print(os.environ[{TAG_VARIABLE!r}])"
    first = spawn([sys.executable, "-c", code], os.environ, tmp_path, tmp_path / "a")
    second = spawn([sys.executable, "-c", code], os.environ, tmp_path, tmp_path / "b")
    assert first.wait(30) == 0 and second.wait(30) == 0
    tags = {(tmp_path / name).read_text().strip() for name in "ab"}
    assert len(tags) == 2 and all(len(tag) == 32 for tag in tags)


# A process that ignores SIGTERM and serves HTTP on PORT once it starts.
STUBBORN = textwrap.dedent(
    """
    import http.server, os, signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
    server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Health)
    server.serve_forever()
    """
)


@pytest.mark.timeout(60)
def test_the_waits_see_a_listener_and_kill_now_ends_one_that_ignores_sigterm(
    tmp_path: Path, cleanup: list[int]
) -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port)}
    server = spawn([sys.executable, "-c", STUBBORN], env, None, tmp_path / "log")
    cleanup.append(server.pid)
    wait_for_port(port, server, timeout=30)
    assert wait_until_healthy(server, f"http://127.0.0.1:{port}/", timeout=30)
    started = time.monotonic()
    kill_now([server])
    assert server.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5  # no wait for a SIGTERM it ignores


@pytest.mark.timeout(60)
def test_the_waits_report_a_process_that_exits_before_it_listens(
    tmp_path: Path,
) -> None:
    code = "import sys; print('bad flag'); sys.exit(3)"
    process = spawn([sys.executable, "-c", code], os.environ, None, tmp_path / "log")
    port = free_port()
    with pytest.raises(RuntimeError, match=r"exited with code 3.*\n.*bad flag"):
        wait_for_port(port, process, timeout=30, log_file=tmp_path / "log")
    assert not wait_until_healthy(process, f"http://127.0.0.1:{port}/", 30)
    with pytest.raises(TimeoutError, match=f"port {port} within 0.3 s"):
        wait_for_port(port, timeout=0.3)


@pytest.mark.timeout(60)
def test_a_child_outside_its_own_group_is_stopped_alone(tmp_path: Path) -> None:
    """A plain child (a ``flwr run`` of the grid) shares this process's group:
    the signal goes to it, not to the group (which holds this test)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stop_processes([child], timeout=5)
        assert child.returncode == -signal.SIGTERM
    finally:
        kill_now([child])
