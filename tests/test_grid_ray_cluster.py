"""A grid on a multi-node Ray cluster (slow: a real two-node cluster on this machine,
started and stopped by the test, and a real Flower simulation on it)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from benchmarks.bench_honest_only import honest_only_accuracy
from flwr_byz.deploy.processes import free_port, session_of, stop_pids
from flwr_byz.experiments.cli import main

RAY = str(Path(sys.executable).parent / "ray")
CELL = "fedavg__none__b0.0__s0__num-server-rounds=2__supernodes=4"

# Run in a subprocess, so this test's process never becomes a Ray driver: the
# cluster's nodes (waiting until there are ``want`` alive) and every
# ClientAppActor the cluster ran, with the node it ran on (the GCS keeps dead
# actors). Ray's state API would need the dashboard; this reads the GCS.
_QUERY = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + 60
while True:
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    if len(nodes) >= int(sys.argv[2]) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
actors = [
    (a["ActorClassName"], a["Address"]["NodeID"], a["State"])
    for a in ray._private.state.actors().values()
]
print("QUERY " + json.dumps({"nodes": nodes, "actors": actors}))
"""


def _free_port_range(size: int) -> tuple[int, int]:
    """``size`` consecutive TCP ports that are free right now (Ray's worker ports)."""
    for first in range(20000, 60000 - size, size):
        sockets = []
        try:
            for port in range(first, first + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return first, first + size - 1
    raise RuntimeError("no free port range")


class _RayCluster:
    """A Ray cluster of nodes started with ``ray start`` on this machine, each
    on free ports, in its own session and under one ``--temp-dir``: stopped by
    PID (never ``ray stop``, which would end every Ray instance here)."""

    def __init__(self, temp_dir: Path) -> None:
        self.temp_dir = temp_dir
        self.sessions: set[int] = set()
        self.address = ""
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)

    def _start(self, *args: str) -> None:
        low, high = _free_port_range(20)
        command = [
            RAY,
            "start",
            *args,
            "--num-cpus=1",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--min-worker-port={low}",
            f"--max-worker-port={high}",
        ]
        # A session of its own: every daemon `ray start` leaves behind (GCS,
        # raylet, agents, workers) stays in it, also those whose process title
        # hides the temp dir (ray::DashboardAgent).
        process = subprocess.Popen(
            command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.sessions.add(process.pid)
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0, out

    def start(self, nodes: int) -> str:
        """Start a head and ``nodes - 1`` more nodes; return the GCS address."""
        port = free_port()
        self._start(
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            f"--dashboard-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
        )
        self.address = f"127.0.0.1:{port}"
        for _ in range(nodes - 1):
            self._start(f"--address={self.address}")
        return self.address

    def query(self, nodes: int) -> dict:
        """Alive node ids (after waiting for ``nodes``) and the actors it ran."""
        result = subprocess.run(
            [sys.executable, "-c", _QUERY, self.address, str(nodes)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        lines = [line for line in result.stdout.splitlines() if "QUERY " in line]
        assert lines, result.stdout + result.stderr
        return json.loads(lines[-1].split("QUERY ", 1)[1])

    def processes(self) -> list[int]:
        """Every process of the cluster: in its sessions, or with its temp dir on
        the command line."""
        marker = str(self.temp_dir).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue  # exited; only waiting for its parent to reap it
            if marker in cmdline or session_of(int(entry.name)) in self.sessions:
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        stop_pids(self.processes(), timeout=10)


@pytest.mark.slow
def test_a_grid_runs_its_clientapps_on_every_node_of_a_ray_cluster(tmp_path) -> None:
    # A short temp dir: Ray's socket paths under it must stay below 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    cluster = _RayCluster(temp_dir)
    try:
        address = cluster.start(nodes=2)
        before = cluster.query(nodes=2)
        assert len(before["nodes"]) == 2, before
        assert not [a for a in before["actors"] if a[0] == "ClientAppActor"]

        out = tmp_path / "out"
        # One CPU per ClientApp on two 1-CPU nodes: Flower's pool is one actor
        # per node, so the cell's four SuperNodes train on both nodes.
        code = main(
            [
                "grid",
                *("--strategies", "fedavg", "--attacks", "none"),
                *("--fractions", "0", "--seeds", "0", "--rounds", "2"),
                *("--supernodes", "4", "--out", str(out)),
                *("--ray-address", address),
                *("--federation-config", "client-resources-num-cpus=1"),
            ]
        )
        log = (out / CELL / "flwr-run.log").read_text()
        assert code == 0, log
        run = json.loads((out / CELL / "results.json").read_text())
        assert run["status"] == "completed", log
        assert len(run["rounds"]) == 3 and run["summary"]["final-accuracy"], log
        # benchmarks/bench_honest_only replicates the app's training in-process:
        # with no attackers it is this FedAvg cell, to the last test example
        # (it divides in float32), wherever the ClientApps ran.
        assert honest_only_accuracy(run["config"], num_nodes=4) == pytest.approx(
            run["summary"]["final-accuracy"], abs=1e-6
        )

        after = cluster.query(nodes=2)
        # The grid left the cluster as it found it: both nodes still up.
        assert after["nodes"] == before["nodes"], after
        ran_on = {node for name, node, _ in after["actors"] if name == "ClientAppActor"}
        assert ran_on == set(before["nodes"]), after
    finally:
        cluster.stop()
        left = cluster.processes()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert left == [], f"processes of the cluster outlived it: {left}"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--federation-config", "init-args-address=x"], "init_args_address"),
        (["--federation-config", "client-resources-num-cpus=1.5"], "federation"),
        (["--federation-config", "num-supernodes=3"], "--supernodes"),
        (["--federation-config", "init-args-num-cpus"], "KEY=VALUE"),
        (
            ["--ray-address", "auto", "--federation-config", "init-args-num-cpus=4"],
            "ray.init refuses",
        ),
        (["--ray-address", "auto", "--jobs", "2"], "one at a time"),
    ],
)
def test_cluster_and_federation_flags_are_checked_before_anything_runs(
    flags, message, tmp_path, capsys
) -> None:
    argv = ["grid", "--dry-run", "--out", str(tmp_path), *flags]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_valid_cluster_flags_pass_the_checks(tmp_path, capsys) -> None:
    flags = ["--ray-address", "auto", "--jobs", "1"]
    flags += ["--federation-config", "client-resources-num-gpus=0.25"]
    assert main(["grid", "--dry-run", "--out", str(tmp_path), *flags]) == 0
    assert "cells" in capsys.readouterr().out
