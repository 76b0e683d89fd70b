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

On the SuperLink machine::

    python -m flwr_byz.experiments.fleet_gateway --listen 0.0.0.0:9092 \\
        --superlink 127.0.0.1:9093 --certificates certificates
"""

from __future__ import annotations

import argparse
import ssl
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

__all__ = ["FLEET_PATHS", "create_app", "main"]

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


def create_app(
    superlink: str,
    ca_cert: str | Path,
    timeout: float = 300.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The gateway's ASGI app, forwarding the Fleet API to ``https://<superlink>``.

    ``ca_cert`` verifies the SuperLink's certificate, which must name the host of
    ``superlink`` (127.0.0.1: :func:`make_certificates` always includes it).
    ``transport`` replaces the network (tests).
    """
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
        try:
            upstream = await client.post(
                path, content=await request.body(), headers=_forwarded(request.headers)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m flwr_byz.experiments.fleet_gateway",
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
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    uvicorn.run(
        create_app(args.superlink, cafile),
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
