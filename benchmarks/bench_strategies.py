"""Time aggregate_train of flwr-byz strategies against Flower's on identical replies.

Run::

    python -m benchmarks.bench_strategies [--dims 1000000,11173962] [--n 50]

For each model size, ``n`` reply Messages (``f`` of them Byzantine) are built once;
every strategy then aggregates fresh Message objects over the same serialised bytes.
Reported per rule: the best wall time over ``--repeats`` runs, Flower's time over ours,
and the peak extra resident memory during the call. The *floor* is measured in the same
run: one copy of the replies' bytes into an ``(n, d)`` float32 matrix plus one Gram
product ``X @ X.T``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategies
from flwr.supercore.task_identity import TaskIdentity

from flwr_byz.strategy import FABA, Bulyan, Krum, Median, MultiKrum, TrimmedMean

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


class _PeakRss:
    """Peak resident memory above the starting level, sampled every 2 ms."""

    def __enter__(self) -> _PeakRss:
        self.base = _rss()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def _split(d: int, parts: int = 16) -> list[tuple[int, ...]]:
    """Array shapes of a d-parameter model: a few large matrices and small vectors."""
    sizes = [d // parts] * parts
    sizes[0] += d - sum(sizes)
    shapes = []
    for i, size in enumerate(sizes):
        if i % 2 == 0 and size % 64 == 0:
            shapes.append((size // 64, 64))
        else:
            shapes.append((size,))
    return shapes


@dataclass
class Fixture:
    """The global model and the replies' serialised arrays."""

    d: int
    n: int
    theta: ArrayRecord
    reply_arrays: list[dict[str, Array]]
    node_ids: list[int]


def build_fixture(d: int, n: int, f: int, seed: int = 0) -> Fixture:
    """``n`` replies: ``n - f`` honest (θ + small noise), ``f`` Byzantine (θ + 10)."""
    rng = np.random.default_rng(seed)
    shapes = _split(d)
    theta_np = {
        f"layer{i}": rng.standard_normal(s, dtype=np.float32)
        for i, s in enumerate(shapes)
    }
    theta = ArrayRecord({k: Array(v) for k, v in theta_np.items()})
    replies = []
    for i in range(n):
        shift = 10.0 if i >= n - f else 0.0
        arrays = {}
        for key, value in theta_np.items():
            noise = rng.standard_normal(value.shape, dtype=np.float32)
            noise *= 0.01
            noise += value
            noise += shift
            arrays[key] = Array(noise)
        replies.append(arrays)
    return Fixture(d, n, theta, replies, list(range(1, n + 1)))


def fresh_replies(fx: Fixture) -> list[Message]:
    """New Message objects over the same Array bytes (Flower's median pops arrays)."""
    out = []
    for node, arrays in zip(fx.node_ids, fx.reply_arrays, strict=True):
        instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
        content = RecordDict(
            {
                "arrays": ArrayRecord(dict(arrays)),
                "metrics": MetricRecord({"num-examples": 100}),
            }
        )
        out.append(Message(content, reply_to=instruction))
    return out


def floor_seconds(fx: Fixture, x: np.ndarray) -> tuple[float, float]:
    """One copy of the replies' bytes into ``x`` (n, d) float32 + one Gram product.

    The payload of each array is the tail of its ``.npy`` bytes (size known from
    the sent model): the copy reads no header, so the floor is the memory traffic
    and the product alone.
    """
    sizes = [(math.prod(a.shape), np.dtype(a.dtype)) for a in fx.theta.values()]
    with _PeakRss() as mem:
        t0 = time.perf_counter()
        for row, arrays in zip(x, fx.reply_arrays, strict=True):
            start = 0
            for array, (size, dtype) in zip(arrays.values(), sizes, strict=True):
                data = array.data
                row[start : start + size] = np.frombuffer(
                    data,
                    dtype=dtype,
                    count=size,
                    offset=len(data) - size * dtype.itemsize,
                )
                start += size
        xt = torch.from_numpy(x)
        gram = xt @ xt.T
        seconds = time.perf_counter() - t0
    del xt, gram
    return seconds, mem.extra_mb


class _Floor:
    """Best floor time so far at one size (and its peak memory)."""

    def __init__(self, fx: Fixture, warm: bool) -> None:
        self.fx, self.warm = fx, warm
        # Warm: one preallocated matrix, as our strategies reuse theirs.
        self.matrix = np.empty((fx.n, fx.d), dtype=np.float32) if warm else None
        self.best, self.peak_mb = math.inf, 0.0

    def sample(self) -> None:
        x = (
            self.matrix
            if self.matrix is not None
            else np.empty((self.fx.n, self.fx.d), dtype=np.float32)
        )
        seconds, extra = floor_seconds(self.fx, x)
        self.best = min(self.best, seconds)
        self.peak_mb = max(
            self.peak_mb, extra + (x.nbytes / 2**20 if self.warm else 0.0)
        )
        del x


def time_once(fx: Fixture, strategy, ours: bool, warm: bool) -> tuple[float, float]:
    """Wall time (s) of one aggregate_train and the peak extra RSS (MB) during it."""
    if ours:
        strategy.remember_sent(1, fx.theta, dict.fromkeys(fx.node_ids, "train"))
        if not warm:
            # A first round: the matrix is allocated anew.
            strategy.round_state = replace(strategy.round_state, buffer=None)
    replies = fresh_replies(fx)
    gc.collect()
    with _PeakRss() as mem:
        t0 = time.perf_counter()
        arrays, _ = strategy.aggregate_train(1, replies)
        seconds = time.perf_counter() - t0
    if arrays is None:
        raise RuntimeError(f"{type(strategy).__name__} returned no arrays")
    del arrays, replies
    if ours and not warm:
        strategy.round_state = replace(strategy.round_state, buffer=None)
    gc.collect()
    return seconds, mem.extra_mb


def run(
    dims: list[int], n: int, f: int, bulyan_f: int, beta: float, repeats: int
) -> list[dict]:
    """Benchmark every pair at every size; returns one row per (size, rule).

    Runs are interleaved (floor, ours, Flower's, floor, ...) so that all three
    see the same machine load; each figure is the best of its runs. Up to 2 M
    parameters the strategies and the floor reuse their ``(n, d)`` matrix as in
    steady-state rounds; above, every run allocates it (memory is shared) and
    the slow rules run once.
    """
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    m = n - f
    pairs: list[tuple[str, Callable, Callable | None]] = [
        (
            "Krum",
            lambda: Krum(num_malicious_nodes=f),
            lambda: flwr_strategies.Krum(num_malicious_nodes=f),
        ),
        (
            "MultiKrum",
            lambda: MultiKrum(num_malicious_nodes=f, num_nodes_to_select=m),
            lambda: flwr_strategies.MultiKrum(
                num_malicious_nodes=f, num_nodes_to_select=m
            ),
        ),
        (f"FABA(f={f})", lambda: FABA(num_malicious_nodes=f), None),
        (
            "Bulyan",
            lambda: Bulyan(num_malicious_nodes=bulyan_f),
            lambda: flwr_strategies.Bulyan(num_malicious_nodes=bulyan_f),
        ),
        ("Median", Median, flwr_strategies.FedMedian),
        (
            "TrimmedMean",
            lambda: TrimmedMean(beta=beta),
            lambda: flwr_strategies.FedTrimmedAvg(beta=beta),
        ),
    ]
    fast = {"Krum", "MultiKrum", f"FABA(f={f})"}
    rows = []
    for d in dims:
        warm = d <= 2_000_000
        fx = build_fixture(d, n, f)
        floor = _Floor(fx, warm)
        floor.sample()
        print(
            f"\n## d = {d:,}, n = {n}, f = {f} (Bulyan f = {bulyan_f}), "
            f"{'warm (reused) matrices' if warm else 'fresh matrices'}",
            flush=True,
        )
        # One untimed round first: library initialisation is not a round's cost.
        time_once(fx, pairs[0][1](), True, warm)
        results = {}
        for name, make_ours, make_theirs in pairs:
            reps = repeats if warm else (2 if name in fast else 1)
            ours, theirs = make_ours(), make_theirs() if make_theirs else None
            t_ours = t_flwr = mb_ours = mb_flwr = math.inf
            mb_ours = mb_flwr = 0.0
            for _ in range(reps):
                floor.sample()
                seconds, extra = time_once(fx, ours, True, warm)
                t_ours, mb_ours = min(t_ours, seconds), max(mb_ours, extra)
                if theirs is not None:
                    seconds, extra = time_once(fx, theirs, False, warm)
                    t_flwr, mb_flwr = min(t_flwr, seconds), max(mb_flwr, extra)
            if theirs is None:
                t_flwr = mb_flwr = math.nan
            del ours, theirs
            gc.collect()
            results[name] = (reps, t_ours, t_flwr, mb_ours, mb_flwr)
            print(
                f"  {name:12s} best of {reps}: ours {t_ours:7.3f} s "
                f"(+{mb_ours:6.0f} MB) | Flower {t_flwr:7.3f} s "
                f"(+{mb_flwr:6.0f} MB)",
                flush=True,
            )
        print(
            f"  floor (copy + Gram): {floor.best:.3f} s (+{floor.peak_mb:.0f} MB)",
            flush=True,
        )
        ours_krum = results["Krum"][1]
        for name, (reps, t_ours, t_flwr, mb_ours, mb_flwr) in results.items():
            rows.append(
                {
                    "d": d,
                    "n": n,
                    "rule": name,
                    "runs": reps,
                    "ours_s": t_ours,
                    "flower_s": t_flwr,
                    "speedup": t_flwr / t_ours,
                    "ours_over_krum": t_ours / ours_krum,
                    "ours_over_floor": t_ours / floor.best,
                    "floor_s": floor.best,
                    "floor_peak_mb": floor.peak_mb,
                    "ours_peak_mb": mb_ours,
                    "flower_peak_mb": mb_flwr,
                }
            )
        del fx, floor
        gc.collect()
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (docs/benchmarks.md)."""
    lines = [
        "| d | rule | runs | ours (s) | Flower (s) | Flower / ours | "
        "ours / floor | ours / our Krum | peak MB ours | peak MB Flower |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['d']:,} | {r['rule']} | {r['runs']} | {r['ours_s']:.3f} | "
            f"{r['flower_s']:.3f} | "
            f"{r['speedup']:.2f}× | {r['ours_over_floor']:.2f} | "
            f"{r['ours_over_krum']:.2f} | {r['ours_peak_mb']:.0f} | "
            f"{r['flower_peak_mb']:.0f} |"
        )
    floors = {r["d"]: (r["floor_s"], r["floor_peak_mb"]) for r in rows}
    lines.append("")
    lines += [
        f"Floor at d = {d:,}: {s:.3f} s, +{mb:.0f} MB (one copy of the "
        "replies' bytes into (n, d) float32 + one Gram product)."
        for d, (s, mb) in floors.items()
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dims",
        default="1000000",
        help="comma-separated model sizes (default: 1000000)",
    )
    parser.add_argument("--n", type=int, default=50, help="replies (default: 50)")
    parser.add_argument(
        "--f",
        type=int,
        default=15,
        help="Byzantine replies and Krum/FABA budget (default: 15)",
    )
    parser.add_argument(
        "--bulyan-f",
        type=int,
        default=None,
        help="Bulyan budget (default: largest with n >= 4f + 3)",
    )
    parser.add_argument("--beta", type=float, default=0.2, help="trimmed-mean beta")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs per rule at d <= 2M (above: 2 for the fast rules, 1 for the others)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", default=None, help="also write rows to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dims = [int(x) for x in args.dims.split(",") if x]
    bulyan_f = args.bulyan_f if args.bulyan_f is not None else (args.n - 3) // 4
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"numpy {np.__version__}"
    )
    rows = run(dims, args.n, args.f, bulyan_f, args.beta, args.repeats)
    print("\n" + markdown(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
