"""Memory of the Fleet gateway and the SuperLink under a keyless flood, and the
time of an honest round beside it.

A :class:`~flwr_byz.deploy.deployment.LocalDeployment` (TLS, SuperNode
authentication, 4 registered SuperNodes, all on 127.0.0.1). A stranger holding
only ``ca.crt`` sends ``--requests`` concurrent POSTs of ``--mb`` MiB each to the
gateway's ``/v1/fleet/push-object``, their size declared (``Content-Length``) or
chunked. Measured: the resident memory (``VmRSS``, sampled every 20 ms) of the
gateway and SuperLink processes before and at the peak of the flood, the status
codes the flood got, and the round time (``train-time-s`` in results.json) of a
one-round FedAvg run alone and with the same flood started beside it.

``--no-limits`` starts the gateway with limits too high to act (a 1 TiB body,
10,000 requests per peer): the gateway as it is without them.

    python -m benchmarks.bench_gateway_flood --requests 4 --mb 200
    python -m benchmarks.bench_gateway_flood --requests 4 --mb 200 --no-limits
"""

from __future__ import annotations

import argparse
import json
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from flwr_byz.deploy.deployment import LocalDeployment

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """The highest VmRSS of ``pids`` while the block runs (sampled every 20 ms)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = {name: _rss_mb(pid) for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], _rss_mb(pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)  # what the last request left behind
        self._stop.set()
        self._thread.join()


def _body(mb: int) -> Iterator[bytes]:
    piece = b"\x00" * MIB
    for _ in range(mb):
        yield piece


def flood(address: str, ca_cert: Path, requests: int, mb: int, chunked: bool) -> list:
    """``requests`` concurrent POSTs of ``mb`` MiB: each one's status or error."""
    tls = ssl.create_default_context(cafile=str(ca_cert))

    def one(_: int) -> str:
        headers = {"content-type": "application/protobuf"}
        if not chunked:
            headers["content-length"] = str(mb * MIB)
        try:
            with httpx.Client(verify=tls, timeout=300) as client:
                reply = client.post(
                    f"https://{address}/v1/fleet/push-object",
                    content=_body(mb),
                    headers=headers,
                )
            return str(reply.status_code)
        except httpx.HTTPError as err:  # the gateway closed the connection
            return type(err).__name__

    with ThreadPoolExecutor(requests) as pool:
        return list(pool.map(one, range(requests)))


def honest_round(deployment: LocalDeployment, out: Path) -> float:
    """``train-time-s`` of round 1 of a one-round FedAvg run."""
    run_config = {
        "num-server-rounds": 1,
        "strategy": "fedavg",
        "attack": "none",
        "seed": 0,
        "output-dir": str(out),
    }
    done = deployment.run(REPO, run_config, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
    rounds = json.loads((out / "results.json").read_text())["rounds"]
    return float(rounds[1]["train-time-s"])


def measure(
    requests: int, mb: int, chunked: bool, no_limits: bool, nodes: int = 4
) -> dict:
    limits = {"max_body_bytes": 2**40, "max_requests_per_peer": 10_000}
    limits = limits if no_limits else {}
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        work = Path(tmp)
        deployment = LocalDeployment(nodes, workdir=work / "deployment", **limits)
        with deployment:
            deployment.node_ids(timeout=120)
            assert (
                deployment.gateway and deployment.superlink and deployment.certificates
            )
            pids = {
                "gateway": deployment.gateway.pid,
                "superlink": deployment.superlink.pid,
            }
            ca = deployment.certificates.ca_cert
            result: dict = {"max-body-bytes": deployment.max_body_bytes}
            result["round-alone-s"] = honest_round(deployment, work / "alone")
            before = {name: _rss_mb(pid) for name, pid in pids.items()}
            with PeakRss(pids) as peak:
                started = time.monotonic()
                result["statuses"] = flood(
                    deployment.fleet_address, ca, requests, mb, chunked
                )
                result["flood-s"] = time.monotonic() - started
            result["rss-before-mb"] = before
            result["rss-peak-mb"] = peak.peak
            with ThreadPoolExecutor(1) as pool:
                beside = pool.submit(
                    flood, deployment.fleet_address, ca, requests, mb, chunked
                )
                result["round-beside-flood-s"] = honest_round(
                    deployment, work / "beside"
                )
                beside.result()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--chunked", action="store_true", help="no Content-Length")
    parser.add_argument("--no-limits", action="store_true")
    parser.add_argument("--nodes", type=int, default=4, help="SuperNodes (default: 4)")
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes: at least 2 (a run waits for 2 SuperNodes)")
    r = measure(args.requests, args.mb, args.chunked, args.no_limits, args.nodes)
    kind = "chunked" if args.chunked else "declared"
    print(
        f"{args.requests} concurrent {args.mb} MiB POSTs ({kind} size), gateway body "
        f"limit {r['max-body-bytes']:,} bytes: answers {r['statuses']} "
        f"in {r['flood-s']:.1f} s"
    )
    for name in ("gateway", "superlink"):
        b, p = r["rss-before-mb"][name], r["rss-peak-mb"][name]
        print(f"{name:9s} RSS: {b:.0f} MB before, {p:.0f} MB peak (+{p - b:.0f} MB)")
    print(
        f"honest round (FedAvg, {args.nodes} SuperNodes): "
        f"{r['round-alone-s']:.1f} s alone, "
        f"{r['round-beside-flood-s']:.1f} s beside the flood"
    )


if __name__ == "__main__":
    main()
