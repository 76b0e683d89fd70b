"""The SuperNodes' only way in: a TLS front that forwards the Fleet API, nothing else.

Flower 1.42's ``flower-superlink`` serves its Fleet API (for SuperNodes), Control
API (for ``flwr run/ls/stop`` and ``flwr supernode register``) and Runtime API
(for the ServerApp) over one HTTPS listener, ``--host``/``--port``; its
``--control-api-address`` flag is deprecated and ignored. Whoever can reach that
listener can use all three: the Control API has no account authentication
without Flower's enterprise OIDC plugin, and the CA certificate is public.

So the SuperLink listens on 127.0.0.1 only, and this gateway listens on the
SuperNodes' network with the same server certificate. It answers ``POST`` on the
Fleet API's paths (:data:`FLEET_PATHS`, those of Flower 1.42's Fleet router) by
forwarding the request unchanged (body and headers, so the SuperNode's signed
authentication headers reach the SuperLink) to the SuperLink over TLS, and every
other path with 404 (other methods: 405) without contacting the SuperLink. ``GET
/health`` reports whether the SuperLink answers (200) or not (503).

Before it buffers a request, the gateway bounds what a client (authenticated or
not: the SuperLink checks the signature only after it decoded the body) can make
it and the SuperLink hold:

* a body larger than ``max_body_bytes`` is answered 413 (and the connection
  closed): unread where ``Content-Length`` declares it, cut off after
  ``max_body_bytes`` where the body is chunked. An honest SuperNode never sends
  more than one array chunk (Flower splits arrays into chunks of
  :data:`ARRAY_CHUNK_BYTES` and pushes one per request) plus a little framing:
  :func:`body_limit` is that, or twice the model's bytes where the model is
  smaller;
* at most ``max_requests_per_peer`` requests of one client address are in
  progress at a time; one more is answered 503 with ``Retry-After`` (Flower's
  SuperNode retries a 503).

On the SuperLink machine::

    python -m flwr_byz.deploy.fleet_gateway --listen 0.0.0.0:9092 \\
        --superlink 127.0.0.1:9093 --certificates certificates
"""

from __future__ import annotations

import argparse
import ssl
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import uvicorn
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

__all__ = [
    "ARRAY_CHUNK_BYTES",
    "BODY_OVERHEAD_BYTES",
    "DEFAULT_MAX_REQUESTS_PER_PEER",
    "FLEET_PATHS",
    "body_limit",
    "command_line",
    "create_app",
    "main",
]

#: The largest array chunk a SuperNode pushes in one ``push-object`` request
#: (Flower's ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``, 5 MiB unless set otherwise).
ARRAY_CHUNK_BYTES = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
#: What a Fleet request holds besides array bytes: protobuf framing, the object
#: head, node and run ids, a message's metadata and its metric/config records.
BODY_OVERHEAD_BYTES = 1 << 20
#: Requests of one client address in progress at a time: one SuperNode has at most
#: two object pushes or pulls, a heartbeat and a message call open.
DEFAULT_MAX_REQUESTS_PER_PEER = 8

#: The Fleet API of Flower 1.42 (``flwr.superlink.routers.fleet.router``), all POST.
FLEET_PATHS = frozenset(
    f"/v1/fleet/{rpc}"
    for rpc in (
        "register-node",
        "activate-node",
        "deactivate-node",
        "unregister-node",
        "send-node-heartbeat",
        "pull-messages",
        "push-messages",
        "get-run",
        "get-fab",
        "push-object",
        "pull-object",
        "confirm-message-received",
    )
)

# Connection-level headers (RFC 9110 §7.6.1) and those httpx sets itself.
_DROPPED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
    }
)


def _forwarded(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _DROPPED_HEADERS}


def body_limit(model_bytes: int | None = None) -> int:
    """The largest Fleet request body the gateway accepts for a model of
    ``model_bytes`` serialized bytes (``None``: any model).

    Every array reaches the SuperLink in chunks of at most
    :data:`ARRAY_CHUNK_BYTES`, one per request, so no honest body exceeds
    ``min(model_bytes, ARRAY_CHUNK_BYTES)`` plus framing; twice that (at most one
    chunk) plus :data:`BODY_OVERHEAD_BYTES` leaves room for the framing.
    """
    if model_bytes is None:
        return ARRAY_CHUNK_BYTES + BODY_OVERHEAD_BYTES
    if model_bytes < 0:
        raise ValueError(f"model_bytes={model_bytes!r} is not valid; valid: >= 0")
    return min(2 * model_bytes, ARRAY_CHUNK_BYTES) + BODY_OVERHEAD_BYTES


def _refused(status: int, text: str, **headers: str) -> Response:
    return PlainTextResponse(text, status_code=status, headers=headers)


def create_app(
    superlink: str,
    ca_cert: str | Path,
    timeout: float = 300.0,
    transport: httpx.AsyncBaseTransport | None = None,
    max_body_bytes: int | None = None,
    max_requests_per_peer: int = DEFAULT_MAX_REQUESTS_PER_PEER,
) -> Starlette:
    """The gateway's ASGI app, forwarding the Fleet API to ``https://<superlink>``.

    ``ca_cert`` verifies the SuperLink's certificate, which must name the host of
    ``superlink`` (127.0.0.1: :func:`make_certificates` always includes it).
    ``max_body_bytes`` (``None``: :func:`body_limit` of any model) and
    ``max_requests_per_peer`` bound what one client address can make the gateway
    buffer. ``transport`` replaces the network (tests).
    """
    limit = body_limit() if max_body_bytes is None else int(max_body_bytes)
    if limit < 1 or max_requests_per_peer < 1:
        raise ValueError(
            f"max_body_bytes={limit!r}, max_requests_per_peer="
            f"{max_requests_per_peer!r}: both must be >= 1"
        )
    too_large = f"request body over {limit} bytes"
    in_progress: Counter[str] = Counter()
    client = httpx.AsyncClient(
        base_url=f"https://{superlink}",
        verify=ssl.create_default_context(cafile=str(ca_cert)),
        timeout=httpx.Timeout(timeout, connect=10.0),
        transport=transport,
    )

    async def fleet(request: Request) -> Response:
        # The decoded path must equal one of Flower's Fleet paths, so no ``..`` or
        # percent-encoding reaches the SuperLink; the query string is dropped.
        path = request.scope["path"]
        if path not in FLEET_PATHS:
            return PlainTextResponse("Not Found", status_code=404)
        peer = request.client.host if request.client else ""
        if in_progress[peer] >= max_requests_per_peer:
            return _refused(
                503,
                "too many requests in progress",
                **{"Retry-After": "1", "Connection": "close"},
            )
        in_progress[peer] += 1
        try:
            return await forward(request, path)
        finally:
            in_progress[peer] -= 1
            if not in_progress[peer]:
                del in_progress[peer]

    async def forward(request: Request, path: str) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return _refused(400, "bad Content-Length", Connection="close")
            if int(declared) > limit:  # refused unread
                return _refused(413, too_large, Connection="close")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:  # a chunked body: cut off
                return _refused(413, too_large, Connection="close")
        try:
            upstream = await client.post(
                path, content=bytes(body), headers=_forwarded(request.headers)
            )
        except httpx.HTTPError:
            return PlainTextResponse("SuperLink unreachable", status_code=502)
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            headers=_forwarded(upstream.headers),
        )

    async def health(request: Request) -> Response:
        try:
            ok = (await client.get("/health", timeout=5.0)).is_success
        except httpx.HTTPError:
            ok = False
        return PlainTextResponse(
            "ok" if ok else "SuperLink unreachable", 200 if ok else 503
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/{path:path}", fleet, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def command_line(
    listen: str,
    superlink: str,
    certificates: str | Path,
    max_body_bytes: int | None = None,
    max_requests_per_peer: int | None = None,
) -> list[str]:
    """``python -m flwr_byz.deploy.fleet_gateway ...`` with this Python: the
    command that starts the gateway (``None``: the flag's default)."""
    command = [sys.executable, "-m", "flwr_byz.deploy.fleet_gateway"]
    command += ["--listen", listen, "--superlink", superlink]
    command += ["--certificates", str(certificates)]
    if max_body_bytes is not None:
        command += ["--max-body-bytes", str(max_body_bytes)]
    if max_requests_per_peer is not None:
        command += ["--max-requests-per-peer", str(max_requests_per_peer)]
    return command


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m flwr_byz.deploy.fleet_gateway",
        description="Expose only the SuperLink's Fleet API to the SuperNodes.",
    )
    parser.add_argument(
        "--listen",
        default="0.0.0.0:9092",
        help="address the SuperNodes connect to (default: %(default)s)",
    )
    parser.add_argument(
        "--superlink",
        default="127.0.0.1:9093",
        help="the SuperLink's loopback --host:--port (default: %(default)s)",
    )
    parser.add_argument(
        "--certificates",
        metavar="DIR",
        help="directory with ca.crt, server.pem and server.key",
    )
    parser.add_argument("--ssl-certfile", help="default: DIR/server.pem")
    parser.add_argument("--ssl-keyfile", help="default: DIR/server.key")
    parser.add_argument("--ssl-ca-certfile", help="default: DIR/ca.crt")
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        help="refuse (413) larger request bodies (default: one array chunk plus "
        f"framing, {body_limit()} bytes; see --model-bytes)",
    )
    parser.add_argument(
        "--model-bytes",
        type=int,
        help="the model's serialized size: the body limit becomes "
        "min(2 x this, one array chunk) plus 1 MiB (ignored with --max-body-bytes)",
    )
    parser.add_argument(
        "--max-requests-per-peer",
        type=int,
        default=DEFAULT_MAX_REQUESTS_PER_PEER,
        help="requests of one client address in progress at a time; more get 503 "
        "(default: %(default)s; SuperNodes behind one address need that many each)",
    )
    args = parser.parse_args(argv)
    folder = Path(args.certificates) if args.certificates else None

    def pick(value: str | None, name: str) -> str:
        if value:
            return value
        if folder is None:
            parser.error(f"give --certificates or every --ssl-* file ({name})")
        return str(folder / name)

    certfile = pick(args.ssl_certfile, "server.pem")
    keyfile = pick(args.ssl_keyfile, "server.key")
    cafile = pick(args.ssl_ca_certfile, "ca.crt")
    try:
        host, port = _host_port(args.listen)
        _host_port(args.superlink)
        max_body = args.max_body_bytes
        if max_body is None:
            max_body = body_limit(args.model_bytes)
        app = create_app(
            args.superlink,
            cafile,
            max_body_bytes=max_body,
            max_requests_per_peer=args.max_requests_per_peer,
        )
    except (argparse.ArgumentTypeError, ValueError) as err:
        parser.error(str(err))
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
