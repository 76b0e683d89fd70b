"""Deployment key material and the Fleet gateway.

Key files are private from creation, an existing CA is never replaced, SuperNode
keys are what Flower loads, and the gateway forwards the Fleet API only.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flwr_byz.experiments.certificates import (
    CERTIFICATE_FILES,
    KeyMaterialExistsError,
    make_certificates,
    make_supernode_keys,
)
from flwr_byz.experiments.deployment import main
from flwr_byz.experiments.fleet_gateway import FLEET_PATHS, create_app


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
