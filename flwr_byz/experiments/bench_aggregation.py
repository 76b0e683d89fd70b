"""Time and memory of every aggregation rule on an in-memory ``(n, d)`` float32 matrix.

Usage::

    python -m flwr_byz.experiments.bench_aggregation \
        [--dims 33130,1000000,11173962] [--n 50] [--f 15] [--repeat 3] \
        [--rules krum,faba]

For each ``d`` it prints a markdown table: the best-of-``repeat`` wall time of each
rule, its ratio to the float32 Gram floor ``x @ x.T`` measured in the same run, and
its peak extra memory. Two floors are timed alongside: one read of the matrix
(``x.sum()``) and one float32 Gram product.

Memory: every rule (and floor) runs in a fresh subprocess that builds the matrix in
place (``torch.empty(...).normal_()``, no temporary), then records the process's
resident-set high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``) before and after
the timed calls. The difference is the peak memory the rule added on top of the
matrix, as the OS saw it (torch temporaries, BLAS buffers, Python objects included).
Rules that refuse the configuration (Bulyan needs ``n >= 4f+3``, brute force refuses
``C(n, f)`` above ``max_subsets``) are shown with their error message; Bulyan is then
also timed with the largest ``f`` it accepts.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from flwr_byz import aggregation as agg


def _cases(n: int, f: int) -> dict[str, Callable[[torch.Tensor], object]]:
    f_bulyan = max(0, (n - 3) // 4)
    return {
        "floor: one read (x.sum())": lambda x: x.sum(),
        "floor: float32 Gram (x @ x.T)": lambda x: x @ x.T,
        "mean": lambda x: agg.mean(x),
        f"faba (f={f})": lambda x: agg.faba(x, f),
        f"krum (f={f})": lambda x: agg.krum(x, f),
        f"multikrum (f={f}, m=n-f)": lambda x: agg.multikrum(x, f),
        f"geomed medoid (f={f})": lambda x: agg.geomed_medoid(x, f),
        f"geometric median, Weiszfeld (f={f})": lambda x: agg.geometric_median(x, f),
        "coordinate median": lambda x: agg.coordinate_median(x),
        f"trimmed mean (beta={f}/{n})": lambda x: agg.trimmed_mean(x, f / n),
        f"bulyan (f={f})": lambda x: agg.bulyan(x, f),
        f"bulyan (f={f_bulyan})": lambda x: agg.bulyan(x, f_bulyan),
        f"brute force (f={f})": lambda x: agg.brute_force(x, f),
    }


def _load() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return fh.read().split()[0]
    except OSError:
        return "n/a"


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _worker(
    case: str, n: int, d: int, f: int, repeat: int, seed: int, threads: int
) -> dict:
    if threads > 0:
        torch.set_num_threads(threads)
    fn = _cases(n, f)[case]
    gen = torch.Generator().manual_seed(seed)
    x = torch.empty(n, d).normal_(generator=gen)
    x[:f] += 1.0  # f shifted rows, so the robust rules have something to remove
    before = _maxrss_bytes()
    times = []
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    except ValueError as err:
        return {"case": case, "error": str(err)}
    return {
        "case": case,
        "best": min(times),
        "extra": max(0, _maxrss_bytes() - before),
        "matrix": x.numel() * x.element_size(),
    }


def _run_case(
    case: str, n: int, d: int, f: int, repeat: int, seed: int, threads: int
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "flwr_byz.experiments.bench_aggregation",
        "--worker",
        case,
        "--n",
        str(n),
        "--f",
        str(f),
        "--dims",
        str(d),
        "--repeat",
        str(repeat),
        "--seed",
        str(seed),
        "--threads",
        str(threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"case": case, "error": f"worker failed: {out.stderr.strip()[-300:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(
    rows: list[dict], n: int, d: int, repeat: int, threads: int, load: str
) -> str:
    gram = next(r["best"] for r in rows if r["case"].startswith("floor: float32 Gram"))
    matrix_mb = n * d * 4 / 2**20
    lines = [
        f"n = {n}, d = {d:,} (matrix {matrix_mb:,.0f} MiB float32), "
        f"best of {repeat}, torch {torch.__version__}, "
        f"{threads or torch.get_num_threads()} threads, "
        f"1-min load average at start {load} (2 cores)",
        "",
        "| rule | time (s) | × Gram floor | peak extra memory (MiB) | × matrix |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | refused: {r['error']} | | | |")
            continue
        extra = r["extra"] / 2**20
        lines.append(
            f"| {r['case']} | {r['best']:.4f} | {r['best'] / gram:.2f} | "
            f"{extra:,.1f} | {r['extra'] / r['matrix']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="33130,1000000,11173962")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--f", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's own)"
    )
    parser.add_argument(
        "--rules",
        default="",
        help="comma-separated substrings: time only the matching rules (floors always)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dims = [int(v) for v in args.dims.split(",")]
    if args.worker is not None:
        print(
            json.dumps(
                _worker(
                    args.worker,
                    args.n,
                    dims[0],
                    args.f,
                    args.repeat,
                    args.seed,
                    args.threads,
                )
            )
        )
        return
    if args.n < 1 or args.f < 0 or args.repeat < 1 or any(d < 1 for d in dims):
        parser.error("need --n >= 1, --f >= 0, --repeat >= 1 and every d >= 1")
    for d in dims:
        rows = []
        load = _load()
        wanted = [w.strip() for w in args.rules.split(",") if w.strip()]
        for case in _cases(args.n, args.f):
            if (
                wanted
                and not case.startswith("floor")
                and not any(w in case for w in wanted)
            ):
                continue
            rows.append(
                _run_case(case, args.n, d, args.f, args.repeat, args.seed, args.threads)
            )
            print(f"  {case}: done", file=sys.stderr, flush=True)
        print(_table(rows, args.n, d, args.repeat, args.threads, load))
        print(flush=True)


if __name__ == "__main__":
    main()
