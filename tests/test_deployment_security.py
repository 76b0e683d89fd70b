"""The deployment's Fleet gateway forwards the Fleet API and nothing else."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx

from flwr_byz.experiments.certificates import (
    make_certificates,
)
from flwr_byz.experiments.fleet_gateway import FLEET_PATHS, create_app


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
