"""The Fleet gateway bounds what a client can make it buffer, before it buffers.

Each test runs the gateway's app in a real uvicorn server on 127.0.0.1 and talks
to it over a raw socket, so the request bytes a test does not send cannot have
been read. The SuperLink behind it is replaced by a transport that records what
reaches it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from flwr_byz.deploy.certificates import make_certificates
from flwr_byz.deploy.fleet_gateway import (
    ARRAY_CHUNK_BYTES,
    BODY_OVERHEAD_BYTES,
    body_limit,
    command_line,
    create_app,
)
from flwr_byz.deploy.processes import free_port, spawn, stop_processes, wait_for_port

LIMIT = 64 * 1024
PATH = "/v1/fleet/push-object"


class Upstream:
    """The SuperLink's side: records each forwarded request; may hold them."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []
        self.release = threading.Event()
        self.release.set()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        await asyncio.to_thread(self.release.wait, 30)
        return httpx.Response(200, content=b"ok")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., tuple[int, Upstream]]]:
    """Start the gateway app (keyword arguments of ``create_app``) on a free port."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []
    make_certificates(tmp_path / "certs")

    def start(**kwargs: object) -> tuple[int, Upstream]:
        upstream = Upstream()
        app = create_app(
            "127.0.0.1:1",
            tmp_path / "certs" / "ca.crt",
            transport=httpx.MockTransport(upstream),
            **kwargs,  # type: ignore[arg-type]
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.02)
        return port, upstream

    yield start
    for server, _ in servers:
        server.should_exit = True
    for _, thread in servers:
        thread.join(10)


def _head(port: int, headers: dict[str, str]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = [f"POST {PATH} HTTP/1.1", "Host: gateway"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def _response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and the raw response, read until the server closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_body_limit_follows_the_model_up_to_one_array_chunk() -> None:
    assert body_limit(1000) == 2000 + BODY_OVERHEAD_BYTES
    assert body_limit(10**9) == ARRAY_CHUNK_BYTES + BODY_OVERHEAD_BYTES
    assert body_limit() == ARRAY_CHUNK_BYTES + BODY_OVERHEAD_BYTES
    with pytest.raises(ValueError, match="model_bytes=-1"):
        body_limit(-1)
    with pytest.raises(ValueError, match="max_body_bytes=0"):
        create_app("127.0.0.1:1", "ca.crt", max_body_bytes=0)


@pytest.mark.timeout(60)
def test_a_declared_oversize_body_is_refused_without_being_read(gateway) -> None:
    port, upstream = gateway(max_body_bytes=LIMIT)
    # 200 MiB declared, not one byte of it sent: only an answer that needs no body
    # can arrive (the socket times out otherwise).
    with _head(port, {"Content-Length": str(200 * 2**20)}) as sock:
        status, raw = _response(sock)
    assert status == 413, raw
    assert b"connection: close" in raw.lower()
    assert not upstream.seen
    # A body at the limit is forwarded whole.
    body = b"\x01" * LIMIT
    with _head(port, {"Content-Length": str(LIMIT), "Connection": "close"}) as sock:
        sock.sendall(body)
        assert _response(sock)[0] == 200
    assert [r.content for r in upstream.seen] == [body]


@pytest.mark.timeout(60)
def test_a_chunked_body_over_the_limit_is_cut_off(gateway) -> None:
    port, upstream = gateway(max_body_bytes=LIMIT)
    sent = 0
    piece = b"\x02" * 4096
    with _head(port, {"Transfer-Encoding": "chunked"}) as sock:
        try:
            # Up to 100 times the limit; the gateway answers long before.
            while sent < 100 * LIMIT:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, raw = _response(sock)
    assert status == 413, raw
    assert not upstream.seen
    # Cut off while the client was still sending (a socket buffer's worth late).
    assert sent < 100 * LIMIT
    # A chunked body within the limit is forwarded.
    with _head(port, {"Transfer-Encoding": "chunked", "Connection": "close"}) as sock:
        sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(piece), piece))
        assert _response(sock)[0] == 200
    assert [r.content for r in upstream.seen] == [piece]


@pytest.mark.timeout(60)
def test_requests_of_one_peer_beyond_the_cap_get_503_until_one_ends(gateway) -> None:
    port, upstream = gateway(max_body_bytes=LIMIT, max_requests_per_peer=3)
    upstream.release.clear()  # the SuperLink holds every request it gets
    held = []
    for _ in range(3):
        sock = _head(port, {"Content-Length": "1", "Connection": "close"})
        sock.sendall(b"x")
        held.append(sock)
    deadline = time.monotonic() + 10
    while len(upstream.seen) < 3:
        assert time.monotonic() < deadline, "the first three were not forwarded"
        time.sleep(0.02)
    # A fourth from the same address is refused unread, with a retry hint (Flower's
    # SuperNode retries a 503); a 200 MiB body behind it is never buffered.
    with _head(port, {"Content-Length": str(200 * 2**20)}) as sock:
        status, raw = _response(sock)
    assert status == 503, raw
    assert b"retry-after: 1" in raw.lower()
    assert len(upstream.seen) == 3
    upstream.release.set()
    for sock in held:
        with sock:
            assert _response(sock)[0] == 200
    # The slots are free again.
    with _head(port, {"Content-Length": "1", "Connection": "close"}) as sock:
        sock.sendall(b"y")
        assert _response(sock)[0] == 200
    assert len(upstream.seen) == 4


@pytest.mark.timeout(90)
def test_the_gateway_process_refuses_a_body_over_its_command_line_limit(
    tmp_path: Path,
) -> None:
    """``python -m flwr_byz.deploy.fleet_gateway ... --max-body-bytes 1000``
    (:func:`command_line`), over TLS, as LocalDeployment starts it (no SuperLink
    needed to refuse)."""
    certificates = make_certificates(tmp_path / "certs")
    port = free_port()
    process = spawn(
        command_line(f"127.0.0.1:{port}", "127.0.0.1:1", tmp_path / "certs", 1000),
        {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        tmp_path,
        tmp_path / "gateway.log",
    )
    tls = ssl.create_default_context(cafile=str(certificates.ca_cert))
    try:
        wait_for_port(port, process, timeout=60, log_file=tmp_path / "gateway.log")
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with tls.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            # 1001 bytes declared (the default limit would wait for them): refused.
            head = f"POST {PATH} HTTP/1.1\r\nHost: g\r\nContent-Length: 1001\r\n\r\n"
            sock.sendall(head.encode())
            status, reply = _response(sock)
        assert status == 413, reply
        assert b"request body over 1000 bytes" in reply
    finally:
        stop_processes([process], timeout=5)
