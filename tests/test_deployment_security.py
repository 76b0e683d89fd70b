"""The deployment is secure by default: the threat model of docs/deployment.md, checked.

Fast: key files are private from creation, an existing CA is never replaced, the
SuperNode keys are what Flower loads, the gateway forwards the Fleet API only.
Slow (real flower-superlink, gateway and flower-supernode processes on 127.0.0.1):
only registered SuperNodes join and run the federation; someone holding only
``ca.crt`` can neither use the Control API nor reach the SuperLink's listener.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import shutil
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flwr_byz.deploy.certificates import (
    CERTIFICATE_FILES,
    KeyMaterialExistsError,
    make_certificates,
    make_supernode_keys,
)
from flwr_byz.deploy.deployment import LocalDeployment, connection_toml, main
from flwr_byz.deploy.fleet_gateway import FLEET_PATHS, create_app

REPO = Path(__file__).resolve().parents[1]
LINUX = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
# Each deployment is a dozen processes (SuperLink, gateway, SuperNodes, one process
# per ClientApp call): two at once on two cores slow each past its time limits, so
# these modules share one worker. No process outlives a test (`no_process_left`).
pytestmark = [
    pytest.mark.xdist_group("deployment"),
    pytest.mark.usefixtures("no_process_left"),
]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- key files ----------------------------------------------------------------------
@pytest.fixture
def no_chmod(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Umask 0 and every chmod refused: only a file *created* 0600 ends up 0600."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"chmod{args}: keys must be created private, not fixed")

    for name in ("chmod", "fchmod", "lchmod"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)
    monkeypatch.setattr(Path, "chmod", refuse)
    previous = os.umask(0)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("no_chmod")
def test_private_keys_are_0600_from_creation_even_with_umask_0(tmp_path: Path) -> None:
    make_certificates(tmp_path / "certs")
    pairs = make_supernode_keys(tmp_path / "keys", ["site-0", "site-1"])
    for key in ("ca.key", "server.key"):
        assert _mode(tmp_path / "certs" / key) == 0o600, key
    for pair in pairs:
        assert _mode(pair.private_key) == 0o600, pair.private_key
        assert _mode(pair.public_key) == 0o644, pair.public_key
    for public in ("ca.crt", "server.pem"):
        assert _mode(tmp_path / "certs" / public) == 0o644, public
    # New key directories are the owner's only.
    assert _mode(tmp_path / "certs") == 0o700
    assert _mode(tmp_path / "keys") == 0o700


def test_recreating_certificates_refuses_to_replace_the_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    make_certificates(folder)
    before = {name: (folder / name).read_bytes() for name in CERTIFICATE_FILES}

    with pytest.raises(KeyMaterialExistsError, match=r"refusing.*--overwrite"):
        make_certificates(folder)
    # One file left is enough to refuse (a half-written or half-deleted CA).
    (folder / "server.pem").unlink()
    with pytest.raises(KeyMaterialExistsError, match=r"ca\.key"):
        make_certificates(folder, ("10.0.0.1",))
    assert not (folder / "server.pem").exists()  # nothing written on refusal
    assert main(["--make-certificates", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite the CA" in err and "--overwrite" in err, err
    for name in ("ca.crt", "ca.key", "server.key"):
        assert (folder / name).read_bytes() == before[name], name

    # Explicitly asked: replaced, and a key made world-readable meanwhile comes back
    # 0600 (recreated, not truncated in place).
    (folder / "ca.key").chmod(0o644)
    assert main(["--make-certificates", str(folder), "--overwrite"]) == 0
    assert (folder / "ca.crt").read_bytes() != before["ca.crt"]
    assert _mode(folder / "ca.key") == 0o600


def test_supernode_keys_are_what_flower_loads_and_are_not_replaced(
    tmp_path: Path,
) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    (pair,) = make_supernode_keys(tmp_path, ["site-0"])
    private = serialization.load_ssh_private_key(pair.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    # What `flwr supernode register` sends is the public half of this node's key.
    assert try_load_public_key(pair.public_key) == public_key_to_bytes(
        private.public_key()
    )
    old = pair.private_key.read_bytes()
    with pytest.raises(KeyMaterialExistsError, match=r"site-0\.key"):
        make_supernode_keys(tmp_path, ["site-0"])
    assert pair.private_key.read_bytes() == old
    for bad in ([], ["a", "a"], ["../x"], [".hidden"], ["a b"]):
        with pytest.raises(ValueError, match="not valid"):
            make_supernode_keys(tmp_path / "bad", bad)


# --- the Fleet gateway ----------------------------------------------------------
def test_gateway_allowlist_is_flowers_fleet_api() -> None:
    from flwr.superlink.routers.fleet.router import router

    assert {route.path for route in router.routes} == set(FLEET_PATHS)
    assert {m for route in router.routes for m in route.methods} == {"POST"}


def _asgi_request(
    app: Any,
    method: str,
    raw_path: bytes,
    body: bytes = b"",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request with a raw, unnormalised path: status, headers and body."""
    sent: list[dict[str, Any]] = []
    path = raw_path.decode("latin-1")
    for escaped in re.findall(r"%[0-9A-Fa-f]{2}", path):
        path = path.replace(escaped, chr(int(escaped[1:], 16)))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"gateway"), *headers],
        "client": ("203.0.113.9", 5000),
        "server": ("gateway", 443),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    content = b"".join(m.get("body", b"") for m in sent[1:])
    return int(start["status"]), dict(start["headers"]), content


def test_gateway_forwards_the_fleet_api_and_nothing_else(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, content=b"reply", headers={"content-type": "application/x-protobuf"}
        )

    make_certificates(tmp_path)
    app = create_app(
        "127.0.0.1:1", tmp_path / "ca.crt", transport=httpx.MockTransport(upstream)
    )
    for path in (
        b"/v1/control/list-runs",
        b"/v1/control/start-run",
        b"/v1/control/stop-run",
        b"/v1/control/register-node",
        b"/v1/fleet/../control/list-runs",
        b"/v1/fleet/%2e%2e/control/list-runs",
        b"/v1/fleet/pull-messages/../../control/list-runs",
        b"/v1/fleet/",
        b"/v1/fleet/pull-messages/",
        b"/docs",
        b"/openapi.json",
    ):
        assert _asgi_request(app, "POST", path)[0] == 404, path
    assert _asgi_request(app, "GET", b"/v1/fleet/pull-messages")[0] == 405
    assert _asgi_request(app, "GET", b"/v1/control/list-runs")[0] == 405
    assert not seen, [str(r.url) for r in seen]

    status, headers, body = _asgi_request(
        app,
        "POST",
        b"/v1/fleet/pull-messages",
        b"\x01\x02",
        (
            (b"content-type", b"application/x-protobuf"),
            (b"flwr-public-key", b"cGs="),
            (b"flwr-signature", b"c2ln"),
        ),
    )
    assert (status, body) == (200, b"reply")
    assert headers[b"content-type"] == b"application/x-protobuf"
    (forwarded,) = seen
    assert str(forwarded.url) == "https://127.0.0.1:1/v1/fleet/pull-messages"
    assert forwarded.content == b"\x01\x02"
    assert forwarded.headers["flwr-public-key"] == "cGs="
    assert forwarded.headers["flwr-signature"] == "c2ln"
    # The client's Host (``gateway`` here) is not passed on: the SuperLink sees its
    # own loopback address, whatever name the client used.
    assert forwarded.headers["host"] == "127.0.0.1:1"
    assert forwarded.headers.get_list("host") == ["127.0.0.1:1"]


# --- real processes -------------------------------------------------------------
@pytest.mark.timeout(180)
@LINUX
def test_the_superlink_refuses_an_unregistered_key_and_keeps_its_files_private(
    tmp_path: Path,
) -> None:
    """The SuperLink alone (seconds, not a federation): a SuperNode key nobody
    registered cannot register itself over the Fleet API, and the SuperLink's
    state and the CLI's connection file are the owner's only."""
    from flwr.proto.fleet_pb2 import RegisterNodeFleetRequest
    from flwr.supercore.primitives.asymmetric import (
        generate_key_pairs,
        public_key_to_bytes,
    )
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    deployment = LocalDeployment(1, workdir=tmp_path / "deployment")
    try:
        deployment.start_superlink(timeout=60)
        assert deployment.certificates is not None
        private, public = generate_key_pairs()
        with (
            FleetHttpClient.from_server_address(
                deployment.address,
                False,
                str(deployment.certificates.ca_cert),
                interceptors=[NodeAuthHttpInterceptor(private, public)],
            ) as client,
            pytest.raises(httpx.HTTPStatusError) as refused,
        ):
            client.RegisterNode(
                RegisterNodeFleetRequest(public_key=public_key_to_bytes(public))
            )
        assert refused.value.response.status_code == 412
        assert "must be registered" in refused.value.response.text
        home = deployment.workdir / "superlink"
        private_files = [
            *home.glob("state.db*"),
            deployment.flwr_home / "config.toml",
        ]
        assert len(private_files) >= 2, private_files
        for path in private_files:
            assert _mode(path) == 0o600, path
        assert _mode(home) == 0o700 and _mode(deployment.flwr_home) == 0o700
    finally:
        deployment.stop()


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f} s")
        time.sleep(0.2)


def _supernode_list(deployment: LocalDeployment) -> list[dict[str, Any]]:
    done = deployment.flwr("supernode", "ls", "--format", "json", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    nodes: list[dict[str, Any]] = json.loads(done.stdout[done.stdout.index("{") :])[
        "nodes"
    ]
    return nodes


@pytest.mark.slow
@pytest.mark.timeout(420)
@LINUX
def test_only_registered_supernodes_join_and_run_the_federation(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    with LocalDeployment(2, workdir=tmp_path / "deployment") as deployment:
        registered = deployment.node_ids()
        assert registered == deployment.registered_node_ids
        # A stranger with ca.crt and nothing else, and one with a key of their own
        # that nobody registered, both claiming partitions of the federation.
        (stranger_key,) = make_supernode_keys(tmp_path / "stranger", ["rogue"])
        rogues = {
            "rogue-ca-only": deployment.spawn_supernode(
                "rogue-ca-only", {"partition-id": 0, "num-partitions": 3}
            ),
            "rogue-own-key": deployment.spawn_supernode(
                "rogue-own-key",
                {"partition-id": 1, "num-partitions": 3},
                stranger_key.private_key,
            ),
        }

        def settled() -> bool:
            return all(
                p.poll() is not None or "SuperNode ID" in deployment.log(name)
                for name, p in rogues.items()
            )

        _wait_for(settled, 60, "the unregistered SuperNodes neither left nor joined")
        for name, process in rogues.items():
            log = deployment.log(name)
            assert "SuperNode ID" not in log, f"{name} joined:\n{log[-2000:]}"
            assert process.returncode not in (None, 0), log[-2000:]
        assert "must be registered" in deployment.log("rogue-ca-only")
        assert "Failed to activate SuperNode" in deployment.log("rogue-own-key")
        listed = {int(n["node-id"]) for n in _supernode_list(deployment)}
        assert listed == set(registered)

        done = deployment.run(
            REPO,
            {
                "num-server-rounds": 1,
                "strategy": "fedavg",
                "attack": "none",
                "seed": 0,
                "output-dir": str(out),
            },
            timeout=240,
        )
        assert done.returncode == 0, (
            done.stdout[-3000:] + done.stderr[-2000:] + deployment.log()[-2000:]
        )
    results = json.loads((out / "results.json").read_text())
    assert results["summary"] is not None
    # Exactly the registered nodes took part, each with its own partition.
    assert results["ground-truth"]["node-partitions"] == {
        str(node): i for i, node in enumerate(registered)
    }
    assert [r["round"] for r in results["rounds"]] == [0, 1]


def _listening(
    pid: int,
) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(address, port) of every TCP socket ``pid`` listens on (``/proc``)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if match := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(match.group(1))
    found = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            raw = bytes.fromhex(hex_ip)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((ipaddress.ip_address(raw), int(hex_port, 16)))
    return found


def _non_loopback_ipv4() -> str | None:
    """This machine's address on its default route, if any (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.mark.slow
@pytest.mark.timeout(360)
@LINUX
@pytest.mark.skipif(sys.byteorder != "little", reason="/proc/net/tcp decoding")
def test_a_stranger_with_only_the_ca_cannot_use_the_control_api(
    tmp_path: Path,
) -> None:
    # One SuperNode: the victim's run then waits (idle) for a second node, so it
    # stays running while the stranger tries their luck.
    with LocalDeployment(1, workdir=tmp_path / "deployment") as deployment:
        victim = deployment.flwr(
            "run",
            str(REPO),
            "local-tls",
            "--format",
            "json",
            "--run-config",
            'num-server-rounds=50 strategy="fedavg" attack="none"',
            timeout=120,
        )
        assert victim.returncode == 0, victim.stdout + victim.stderr
        run_id = json.loads(victim.stdout[victim.stdout.index("{") :])["run-id"]

        # The stranger's own FLWR_HOME, with a copy of the public ca.crt, pointed at
        # the only address SuperNodes are given.
        assert deployment.certificates is not None
        home = tmp_path / "stranger"
        home.mkdir()
        shutil.copy(deployment.certificates.ca_cert, home / "ca.crt")
        (home / "config.toml").write_text(
            connection_toml("stolen", deployment.fleet_address, home / "ca.crt")
        )
        (key,) = make_supernode_keys(home / "keys", ["mine"])

        def stranger(*args: str) -> Any:
            env = {**deployment.env, "FLWR_HOME": str(home)}
            return deployment.flwr(*args, timeout=120, env=env)

        attempts = {
            "ls": stranger("ls", "stolen"),
            "stop": stranger("stop", str(run_id), "stolen"),
            "run": stranger("run", str(REPO), "stolen"),
            "supernode ls": stranger("supernode", "ls", "stolen"),
            "supernode register": stranger(
                "supernode", "register", str(key.public_key), "stolen"
            ),
        }
        for what, done in attempts.items():
            assert done.returncode != 0, f"flwr {what}: {done.stdout}{done.stderr}"

        # The victim's run is untouched and the stranger's never started.
        listed = deployment.flwr("ls", "--format", "json", timeout=60)
        runs = json.loads(listed.stdout[listed.stdout.index("{") :])["runs"]
        assert [int(r["run-id"]) for r in runs] == [int(run_id)], runs
        assert "stopped" not in runs[0]["status"], runs[0]
        assert len(_supernode_list(deployment)) == 1

        # The SuperLink's one listener (Control, Runtime and Fleet APIs) is on
        # loopback only; from this machine's own network address it is closed.
        assert deployment.superlink is not None
        sockets = _listening(deployment.superlink.pid)
        assert deployment.port in {port for _, port in sockets}, sockets
        assert all(address.is_loopback for address, _ in sockets), sockets
        if (address := _non_loopback_ipv4()) is not None:
            with pytest.raises(OSError):
                socket.create_connection((address, deployment.port), timeout=3).close()
