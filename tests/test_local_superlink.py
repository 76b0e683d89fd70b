"""The private SuperLink starts even when another process takes its port first,
and stops with everything it started."""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from flwr_byz.deploy.local_superlink import LocalSuperLink
from flwr_byz.deploy.processes import free_port, is_alive, spawn

_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _hold(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_port_taken_before_the_superlink_binds_it_is_replaced() -> None:
    link = LocalSuperLink()
    taken = link.http_port
    # What a Ray worker starting beside the grid did on CI: bind the port that
    # free_port() had just found free.
    with _hold(taken):
        try:
            link.start()
            assert link.http_port != taken
            assert link.env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] == str(link.http_port)
            health = httpx.get(f"http://127.0.0.1:{link.http_port}/health", timeout=5)
            assert health.is_success
        finally:
            link.stop()


def test_the_last_failed_attempt_says_why_with_the_superlinks_output() -> None:
    link = LocalSuperLink()
    with _hold(link.http_port):
        try:
            with pytest.raises(RuntimeError) as failed:
                link.start(attempts=1)
        finally:
            link.stop()
    message = str(failed.value)
    assert f"port {link.http_port} taken" in message
    assert "attempt 1 of 1" in message
    assert "Starting Flower SuperLink" in message


@pytest.mark.skipif(not _EPHEMERAL.exists(), reason="needs Linux /proc")
def test_free_ports_lie_below_the_ephemeral_range_and_leave_random_alone() -> None:
    # Outgoing connections and bind(port=0) draw from the ephemeral range: a port
    # found free there is the likeliest to be gone when the SuperNode binds it.
    low = int(_EPHEMERAL.read_text().split()[0])
    if low < 22000:
        pytest.skip(f"ephemeral range starts at {low}: nothing below it to draw")
    random.seed(3)
    expected = random.random()
    random.seed(3)
    ports = [free_port() for _ in range(50)]
    assert random.random() == expected
    assert all(21000 <= port < low for port in ports)
    assert len(set(ports)) > 40


_SUPEREXEC = """
import os, signal, subprocess, sys, time
def down(*_):
    # A helper started on the way down, its environment without FLWR_HOME (as
    # Ray's agents rewrite theirs), in this session.
    helper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env={"PATH": os.environ["PATH"]},
    )
    with open(sys.argv[1], "w") as out:
        out.write(str(helper.pid))
    os._exit(0)
signal.signal(signal.SIGTERM, down)
open(sys.argv[1] + ".up", "w").close()
time.sleep(120)
"""

_SUPERLINK = """
import subprocess, sys, time
subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]], start_new_session=True)
time.sleep(120)
"""


def test_stop_ends_what_the_superexec_started_on_its_way_down(tmp_path: Path) -> None:
    link = LocalSuperLink(tmp_path / "home")
    (tmp_path / "superexec.py").write_text(_SUPEREXEC)
    (tmp_path / "superlink.py").write_text(_SUPERLINK)
    helper_file = tmp_path / "helper.pid"
    link.process = spawn(
        [
            sys.executable,
            str(tmp_path / "superlink.py"),
            str(tmp_path / "superexec.py"),
            str(helper_file),
        ],
        link.env,
        None,
        tmp_path / "superlink.out",
    )
    deadline = time.monotonic() + 30
    while not Path(f"{helper_file}.up").exists():
        assert time.monotonic() < deadline, "the stand-in SuperExec did not start"
        time.sleep(0.05)
    helper = None
    try:
        link.stop()
        helper = int(helper_file.read_text())
        assert not is_alive(helper)
    finally:
        if helper is not None and is_alive(helper):
            os.kill(helper, signal.SIGKILL)
