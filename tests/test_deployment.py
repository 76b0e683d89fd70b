"""The app in a real deployment: a TLS SuperLink and SuperNodes on 127.0.0.1.

Its security (SuperNode authentication, the loopback Control API, key files) is
checked in ``test_deployment_security.py``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from flwr.cli.flower_config import parse_superlink_connection

from flwr_byz.deploy.deployment import (
    CONNECTION,
    LocalDeployment,
    connection_toml,
    make_certificates,
    register_supernode,
)

REPO = Path(__file__).resolve().parents[1]
# Each deployment is a dozen processes (SuperLink, gateway, SuperNodes, one process
# per ClientApp call): two at once on two cores slow each past its time limits, so
# these modules share one worker. No process outlives a test (`no_process_left`).
pytestmark = [
    pytest.mark.xdist_group("deployment"),
    pytest.mark.usefixtures("no_process_left"),
]


def test_server_certificate_verifies_against_the_ca_for_each_host(
    tmp_path: Path,
) -> None:
    paths = make_certificates(tmp_path, ("127.0.0.1", "localhost", "link.example"))
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    store = Store([ca])
    for host in ("127.0.0.1", "localhost", "link.example"):
        name: x509.verification.Subject = (
            x509.IPAddress(ipaddress.ip_address(host))
            if host[0].isdigit()
            else x509.DNSName(host)
        )
        chain = (
            PolicyBuilder().store(store).build_server_verifier(name).verify(leaf, [])
        )
        assert chain[-1] == ca
    with pytest.raises(x509.verification.VerificationError):
        PolicyBuilder().store(store).build_server_verifier(
            x509.DNSName("other.example")
        ).verify(leaf, [])
    # Keys are private to their owner.
    assert paths.server_key.stat().st_mode & 0o077 == 0


def test_connection_toml_is_what_flower_reads(tmp_path: Path) -> None:
    text = connection_toml("site", "10.0.0.5:9093", tmp_path / "ca.crt")
    doc = tomllib.loads(text)
    assert doc["superlink"]["default"] == "site"
    connection = parse_superlink_connection(doc["superlink"]["site"], "site")
    assert connection.address == "10.0.0.5:9093"
    assert connection.root_certificates == str((tmp_path / "ca.crt").resolve())
    assert not connection.insecure


def test_bad_node_counts_are_named() -> None:
    with pytest.raises(ValueError, match="num_nodes=0"):
        LocalDeployment(0)
    with pytest.raises(ValueError, match="node_configs has 1 entries; num_nodes=2"):
        LocalDeployment(2, node_configs=[{"data-path": "a.npz"}])


def _fake_flwr(tmp_path: Path, slow_calls: str) -> Path:
    """A ``flwr`` that counts its calls, hangs on the calls in ``slow_calls``
    (e.g. ``"1"``: the first) and otherwise answers as ``supernode register``."""
    script = tmp_path / "flwr"
    script.write_text(
        f"#!{sys.executable}\n"
        "import pathlib, sys, time\n"
        f"count = pathlib.Path({str(tmp_path / 'calls')!r})\n"
        "n = int(count.read_text()) + 1 if count.exists() else 1\n"
        "count.write_text(str(n))\n"
        f"if str(n) in {slow_calls!r}.split(','):\n"
        "    time.sleep(60)\n"
        'print(\'{"success": true, "node-id": 4242}\')\n'
    )
    script.chmod(0o755)
    return script


@pytest.mark.timeout(60)
def test_a_register_command_that_hangs_is_tried_again(tmp_path: Path) -> None:
    flwr = _fake_flwr(tmp_path, "1")
    # Each call starts a Python: seconds on a loaded machine, before it counts.
    node_id = register_supernode("key.pub", "c", timeout=5.0, flwr=flwr)
    assert node_id == 4242
    assert (tmp_path / "calls").read_text() == "2"


@pytest.mark.timeout(60)
def test_a_register_command_that_always_hangs_ends_in_a_clear_error(
    tmp_path: Path,
) -> None:
    flwr = _fake_flwr(tmp_path, "1,2,3,4")
    with pytest.raises(RuntimeError, match=r"did not answer within 3 s, 3 time") as err:
        register_supernode("key.pub", "c", timeout=3.0, flwr=flwr)
    assert "supernode register key.pub c" in str(err.value)
    assert (tmp_path / "calls").read_text() == "3"


@pytest.mark.timeout(300)
def test_ports_taken_before_the_superlink_gateway_and_supernode_bind_are_replaced(
    tmp_path: Path,
) -> None:
    deployment = LocalDeployment(1, workdir=tmp_path / "deployment")
    node_port = int(deployment.node_addresses[0].rsplit(":", 1)[1])
    taken = (deployment.port, deployment.fleet_port, node_port)
    # Another process binds the ports free_port() had just found free.
    holders = []
    for port in taken:
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        holders.append(holder)
    try:
        with deployment:
            assert deployment.port not in taken
            assert deployment.fleet_port not in taken
            # The CLI's connection and the SuperNodes use the ports in use.
            config = (deployment.flwr_home / "config.toml").read_text()
            assert deployment.address in config
            assert len(deployment.node_ids()) == 1
            assert deployment.node_addresses[0] != f"127.0.0.1:{node_port}"
    finally:
        for holder in holders:
            holder.close()


def _command_lines() -> list[tuple[int, str]]:
    """``(pid, command line)`` of every live process."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append((int(cmdline.parent.name), text))
    return found


def _processes_mentioning(needles: list[str], skip: str = "pytest") -> list[str]:
    """Command lines of live processes that name one of ``needles`` (and not
    ``skip``, when given)."""
    return [
        text
        for _, text in _command_lines()
        if any(n in text for n in needles) and not (skip and skip in text)
    ]


# Scaling (×10) rather than sign flip: with 4 heterogeneous regions one sign-flipped
# update is not always the farthest from the mean (seed 0: FABA removes it in round
# 1 only), so "removed every round" would test the data, not the deployment.
RUN = {
    "num-server-rounds": 2,
    "strategy": "faba",
    "attack": "scaling",
    "byzantine-fraction": 0.25,
    "assumed-byzantine-fraction": 0.25,
    "seed": 0,
}


def _rounds_written(path: Path) -> list[int]:
    """Rounds in a results.json being written (atomically replaced per round)."""
    try:
        return [r["round"] for r in json.loads(path.read_text())["rounds"]]
    except (OSError, ValueError, KeyError):
        return []


def _needles(deployment: LocalDeployment) -> list[str]:
    """What the command line of every process of ``deployment`` names."""
    return [
        deployment.address,
        deployment.fleet_address,
        *deployment.node_addresses,
        str(deployment.workdir),
    ]


def _logs(done, deployment: LocalDeployment, node: str) -> str:
    return (
        done.stdout[-4000:]
        + done.stderr[-2000:]
        + "\n--- superlink.log ---\n"
        + deployment.log()[-2000:]
        + f"\n--- {node}.log ---\n"
        + deployment.log(node)[-2000:]
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_kill_9_of_a_supernode_after_round_1_the_run_completes_and_records_it(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    deployment = LocalDeployment(4, workdir=tmp_path / "deployment")
    needles = _needles(deployment)
    run_config = {
        **RUN,
        "num-server-rounds": 3,
        # Longer than the SuperLink takes to call a silent node offline (two
        # missed 30 s heartbeats): round 2 ends on the SuperLink's notice.
        "round-timeout": 90.0,
        "node-wait-timeout": 60.0,
        "output-dir": str(out),
    }
    with deployment:
        victim = deployment.node_ids()[2]
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(deployment.run, REPO, run_config, timeout=360)
            while 1 not in _rounds_written(out / "results.json"):
                if running.done():
                    break
                time.sleep(0.1)
            if not running.done():
                deployment.kill_supernode(2)  # SIGKILL: no deregistration
            done = running.result()
        logs = _logs(done, deployment, "supernode-0")
    assert not _processes_mentioning(needles), "processes left behind"
    assert done.returncode == 0, logs

    results = json.loads((out / "results.json").read_text())
    assert results["summary"] is not None, logs
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3], logs
    gone = {"node-id": victim, "partition-id": 2, "reason": "node-unavailable"}
    # Round 2 was sent to the dead node; the SuperLink's notice (sender id 1)
    # is its missing reply, not an "unexpected-node" reply of node 1.
    assert [r["missing"] for r in rounds[1:]] == [[], [gone], []], logs
    for entry in rounds[1:]:
        assert not entry["rejected"], entry
    assert len(rounds[2]["node-ids"]) == 3
    # Round 3 sampled the three nodes still connected instead of waiting for 4.
    assert len(rounds[3]["node-ids"]) == 3 and victim not in rounds[3]["node-ids"]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_tls_deployment_faba_removes_the_attacker_and_a_sleeper_never_stalls(
    tmp_path: Path,
) -> None:
    """One TLS deployment of 4 SuperNodes (one deployment for both checks: each
    costs a SuperLink, four SuperNodes and a process per ClientApp call):

    * the SuperLink speaks TLS only, the app runs and FABA removes the attacker
      (partition 3) in every round;
    * SuperNode 1 answers 10 min late (fault injection): each round ends at its
      ``round-timeout`` with that node reported ``timed-out``.
    """
    out = tmp_path / "out"
    configs = [{"partition-id": i, "num-partitions": 4} for i in range(4)]
    configs[1]["sleep-seconds"] = 600  # fault injection: answers 10 min late
    deployment = LocalDeployment(4, node_configs=configs, workdir=tmp_path / "dep")
    needles = _needles(deployment)
    # Well above a round of the other nodes on a busy machine (each message starts
    # a ClientApp process), far below the sleep.
    timeout = 60.0
    run_config = {
        **RUN,
        # f = floor(0.34 · 3) = 1 of the 3 replies that arrive in time.
        "assumed-byzantine-fraction": 0.34,
        "round-timeout": timeout,
        "output-dir": str(out),
    }
    with deployment:
        # Without the CA the CLI cannot even list runs: the SuperLink speaks TLS
        # only, with a certificate no system trust store knows.
        config = deployment.flwr_home / "config.toml"
        assert tomllib.loads(config.read_text())["superlink"]["default"] == CONNECTION
        config.write_text(
            config.read_text()
            + f'\n[superlink.no-ca]\naddress = "{deployment.address}"\n'
        )
        sleeper = deployment.node_ids()[1]
        with ThreadPoolExecutor(1) as pool:  # overlaps the run's start-up
            refused = pool.submit(deployment.flwr, "ls", "no-ca", timeout=60)
            done = deployment.run(REPO, run_config, timeout=360)
        logs = _logs(done, deployment, "supernode-1")
        assert refused.result().returncode != 0, refused.result().stdout
        node_ids = deployment.node_ids(timeout=5)
    assert not _processes_mentioning(needles), "processes left behind"
    assert done.returncode == 0, logs

    results = json.loads((out / "results.json").read_text())
    assert results["summary"] is not None, logs
    truth = results["ground-truth"]
    # The four SuperNodes started here, each reporting its own partition.
    assert sorted(truth["node-partitions"]) == sorted(map(str, node_ids))
    assert sorted(truth["node-partitions"].values()) == [0, 1, 2, 3]
    assert truth["byzantine-partition-ids"] == [3]  # floor(0.25 · 4), seed 0
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2], logs
    late = {"node-id": sleeper, "partition-id": 1, "reason": "timed-out"}
    for entry in rounds:
        assert isinstance(entry["accuracy"], float), entry
        assert 0.0 <= entry["accuracy"] <= 1.0
    for entry in rounds[1:]:
        assert entry["missing"] == [late], entry
        assert len(entry["node-ids"]) == 3 and not entry["rejected"], entry
        # The round ends at its timeout (plus a 3 s poll and the aggregation, and
        # whatever a loaded machine adds), not when the sleeper wakes up (600 s).
        assert timeout <= entry["train-time-s"] < timeout + 60, entry
        assert entry["removed-node-ids"] == truth["byzantine-node-ids"], entry
        assert len(entry["selected-node-ids"]) == 2
    assert results["summary"]["detection-correct"] is True


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_stop_ends_the_serverapp_of_a_superlink_that_got_sigterm(
    tmp_path: Path,
) -> None:
    """A SIGTERM to the SuperLink leaves its ServerApp process running (Flower's
    SuperExec starts it in a session of its own); stop() still ends it."""
    deployment = LocalDeployment(1, workdir=tmp_path / "deployment")
    needles = _needles(deployment)
    try:
        deployment.start()
        # One SuperNode: the run waits for a second one, its ServerApp stays up.
        submitted = deployment.flwr(
            "run",
            str(REPO),
            CONNECTION,
            "--run-config",
            'num-server-rounds=50 strategy="fedavg" attack="none"',
            timeout=120,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr

        def serverapps() -> list[str]:
            # (Its command line names the CA under tmp_path, a "pytest" path.)
            return [
                c
                for c in _processes_mentioning([deployment.address], skip="")
                if "flwr-serverapp" in c
            ]

        deadline = time.monotonic() + 90
        while not serverapps():
            assert time.monotonic() < deadline, "no ServerApp process started"
            time.sleep(0.5)
        assert deployment.superlink is not None
        os.kill(deployment.superlink.pid, signal.SIGTERM)
        deployment.superlink.wait(timeout=30)
    finally:
        deployment.stop()
    assert not serverapps(), "the ServerApp was left running"
    assert not _processes_mentioning(needles), "processes left behind"


def _readme_command(
    tmp_path: Path, nodes: int, rounds: int
) -> tuple[subprocess.Popen[str], Path]:
    """``python -m flwr_byz.deploy.deployment --nodes N --rounds R``, as the README
    gives it (with an output directory and a kept work directory here), started;
    its stderr goes to ``stderr.txt``. Returns the process and the work directory."""
    out, workdir = tmp_path / "out", tmp_path / "deployment"
    command = [sys.executable, "-m", "flwr_byz.deploy.deployment"]
    command += ["--nodes", str(nodes), "--rounds", str(rounds)]
    command += ["--output-dir", str(out), "--keep", str(workdir)]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    return process, workdir


def _end(process: subprocess.Popen[str], workdir: Path) -> None:
    """Where a test gives up on the command: SIGTERM (it stops what it started),
    then SIGKILL to whatever still names ``workdir``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=90)
        process.kill()
        process.wait()
    for pid, text in _command_lines():
        if str(workdir) in text:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.timeout(1020)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_the_readme_command_runs_the_app_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    """``python -m flwr_byz.deploy.deployment --nodes 4 --rounds 3``."""
    process, workdir = _readme_command(tmp_path, nodes=4, rounds=3)
    try:
        # 150 s here on its own; rounds of 140 s each beside the suite's Ray
        # simulations on a slow day (a ClientApp process per message).
        stdout, _ = process.communicate(timeout=840)
    finally:
        _end(process, workdir)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "4 registered SuperNodes" in stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2, 3]
    assert not _processes_mentioning([str(workdir)], skip=""), "processes left"


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_sigterm_to_the_readme_command_stops_everything_it_started(
    tmp_path: Path,
) -> None:
    """A scheduler or ``kill`` ends the command with SIGTERM: the SuperLink, the
    gateway and the SuperNodes (each in a session of its own) go with it, and it
    exits 130, as after Ctrl-C."""
    process, workdir = _readme_command(tmp_path, nodes=1, rounds=1)
    try:
        assert process.stdout is not None
        started = process.stdout.readline()
        assert "registered SuperNodes" in started, started
        assert _processes_mentioning([str(workdir)], skip=""), "nothing started"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        left = _processes_mentioning([str(workdir)], skip="")
    finally:
        _end(process, workdir)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert not left, "processes left running"
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted; the SuperLink, gateway and SuperNodes" in stderr
