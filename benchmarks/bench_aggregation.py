"""Time and memory of every aggregation rule on an in-memory ``(n, d)`` float32 matrix.

Usage::

    python -m benchmarks.bench_aggregation \
        [--dims 33130,1000000,11173962] [--n 50] [--f 15] [--repeat 3] \
        [--rules krum,faba]

For each ``d`` it prints a markdown table: the best-of-``repeat`` wall time of each
rule, its ratio to the float32 Gram floor ``x @ x.T`` measured in the same run, and
its peak extra memory. Two floors are timed alongside: one read of the matrix
(``x.sum()``) and one float32 Gram product.

Time: one process builds the matrix and runs ``repeat`` rounds, each round calling
every rule once (interleaved, so load from other processes on a shared machine hits
all rules alike); the table shows each rule's best time.

Memory: every rule (and floor) then runs once more in a fresh subprocess that builds
the same matrix in place (``torch.empty(...).normal_()``, no temporary), resets the
kernel's peak-RSS mark to the current RSS (``/proc/self/clear_refs``, Linux), calls the
rule and reads the new peak (``VmHWM``). The difference is the most memory the call
added on top of the matrix, as the OS saw it (torch temporaries, BLAS buffers,
Python objects, the result). It is measured cold (first call in the process).
Rules that refuse the configuration (Bulyan needs ``n >= 4f+3``, brute force refuses
``C(n, f)`` above ``max_subsets``) are shown with their error message; Bulyan is then
also timed with the largest ``f`` it accepts.
"""

from __future__ import annotations

import argparse
import json
import math
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


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(key)


def _reset_peak() -> int:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0); return RSS bytes."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_kib("VmRSS") * 1024


def _peak() -> int:
    return _status_kib("VmHWM") * 1024


def _matrix(n: int, d: int, f: int, seed: int, offset: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.empty(n, d).normal_(generator=gen)  # in place: no temporary
    x[:f] += 1.0  # f shifted rows, so the robust rules have something to remove
    if offset:
        # A common component `offset` times the spread, row by row (no n × d copy).
        common = torch.empty(d).normal_(generator=gen).mul_(offset)
        for row in x:
            row.add_(common)
    return x


def _worker(
    case: str, n: int, d: int, f: int, seed: int, threads: int, offset: float
) -> dict:
    """Peak extra memory of one call, in a fresh process (see the module docstring)."""
    if threads > 0:
        torch.set_num_threads(threads)
    fn = _cases(n, f)[case]
    x = _matrix(n, d, f, seed, offset)
    ran = {"case": case, "seed": seed, "threads": torch.get_num_threads()}
    ran["offset"] = offset
    before = _reset_peak()
    try:
        fn(x)
    except ValueError as err:
        return {**ran, "error": str(err)}
    return {
        **ran,
        "extra": max(0, _peak() - before),
        "matrix": x.numel() * x.element_size(),
    }


def _timings(
    cases: list[str], n: int, d: int, f: int, repeat: int, seed: int, offset: float
) -> dict[str, float | str]:
    """Best-of-``repeat`` wall time per case, interleaved.

    Every round runs every case once, so a burst of load from other processes on a
    shared machine hits all cases alike instead of one rule's whole series.
    """
    fns = _cases(n, f)
    x = _matrix(n, d, f, seed, offset)
    best: dict[str, float | str] = {}
    for _ in range(repeat):
        for case in cases:
            if isinstance(best.get(case), str):
                continue  # refused once: refuses always
            start = time.perf_counter()
            try:
                fns[case](x)
            except ValueError as err:
                best[case] = str(err)
                continue
            elapsed = time.perf_counter() - start
            best[case] = min(elapsed, best.get(case, math.inf))
        print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return best


def _run_case(
    case: str, n: int, d: int, f: int, seed: int, threads: int, offset: float
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_aggregation",
        "--worker",
        case,
        "--n",
        str(n),
        "--f",
        str(f),
        "--dims",
        str(d),
        "--offset",
        str(offset),
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
    times: dict[str, float | str],
    memory: dict[str, dict],
    n: int,
    d: int,
    repeat: int,
    threads: int,
    load: str,
    offset: float,
) -> str:
    gram = next(t for c, t in times.items() if c.startswith("floor: float32 Gram"))
    assert isinstance(gram, float)
    matrix = n * d * 4
    lines = [
        f"n = {n}, d = {d:,} (matrix {matrix / 2**20:,.0f} MiB float32), "
        f"best of {repeat} interleaved rounds, torch {torch.__version__}, "
        f"{threads or torch.get_num_threads()} thread(s), common offset {offset:g}, "
        f"1-min load average at start {load} (2 cores)",
        "",
        "| rule | time (s) | × Gram floor | peak extra memory (MiB) | × matrix |",
        "|---|---:|---:|---:|---:|",
    ]
    for case, t in times.items():
        if isinstance(t, str):
            lines.append(f"| {case} | refused: {t} | | | |")
            continue
        mem = memory.get(case, {})
        if "extra" in mem:
            extra = f"{mem['extra'] / 2**20:,.1f} | {mem['extra'] / matrix:.2f}"
        else:
            extra = f"n/a ({mem.get('error', 'not measured')}) |"
        lines.append(f"| {case} | {t:.4f} | {t / gram:.2f} | {extra} |")
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
        "--offset",
        type=float,
        default=0.0,
        help="add a common random component this many times the rows' spread "
        "(> ~1.5 exercises the explicitly centred Gram path)",
    )
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
                    args.seed,
                    args.threads,
                    args.offset,
                )
            )
        )
        return
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.n < 1 or args.f < 0 or args.repeat < 1 or any(d < 1 for d in dims):
        parser.error("need --n >= 1, --f >= 0, --repeat >= 1 and every d >= 1")
    for d in dims:
        load = _load()
        wanted = [w.strip() for w in args.rules.split(",") if w.strip()]
        cases = [
            c
            for c in _cases(args.n, args.f)
            if c.startswith("floor") or not wanted or any(w in c for w in wanted)
        ]
        times = _timings(cases, args.n, d, args.f, args.repeat, args.seed, args.offset)
        memory = {}
        for case in cases:
            if isinstance(times[case], str):
                continue
            memory[case] = _run_case(
                case, args.n, d, args.f, args.seed, args.threads, args.offset
            )
            print(f"  memory {case}: done", file=sys.stderr, flush=True)
        print(
            _table(
                times, memory, args.n, d, args.repeat, args.threads, load, args.offset
            )
        )
        print(flush=True)


if __name__ == "__main__":
    main()
