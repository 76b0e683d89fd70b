"""Cost of every rule against the work it must do, from 10 to 1,000 clients.

Run::

    python -m benchmarks.bench_scale [--ns 10,50,200,500,1000]
        [--dims 20000,33130,1000000]

See :func:`main` for the options. For each (n, d) the same ``n`` reply Messages
(updates from :func:`scale_updates`) are aggregated, at strategy level
(``aggregate_train``, replies validated, model stepped), by Flower's FedAvg, by
every flwr-byz rule (exact distances, and with the opt-in count sketch) and by
Flower's counterpart where one exists, in the same process and interleaved. The
*floor* is one copy of the replies' bytes into an ``(n, d)`` float32 matrix plus
one Gram product ``X Xᵀ``, sampled in the same run right before each timed call
of a rule: a rule's ``÷ floor`` is its best time over the best of the floor
samples paired with its own runs (as many of each). Printed as ratios: Flower ÷
ours, ours ÷ floor, FABA ÷ our Krum; then a targets table, one line per (n, d):
the floor (its best in that size), each exact distance rule ÷ its paired floor,
Flower's Krum ÷ ours, and our ``Mean`` ÷ Flower's ``FedAvg``, each the best of
as many runs, taken in turns (the Mean row's own pairs).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp import strategy as flwr_strategies
from flwr.supercore.task_identity import TaskIdentity

from benchmarks import bench_strategies
from benchmarks.bench_strategies import Fixture, _PeakRss, _split
from flwr_byz import strategy as ours
from flwr_byz.aggregation.sketch import DEFAULT_SKETCH_DIM
from flwr_byz.data import load_server_data
from flwr_byz.models import build_model
from flwr_byz.strategy.gaa import GAA


def scale_updates(n: int, d: int, f: int, seed: int = 0) -> np.ndarray:
    """``(n, d)`` float32 updates: ``n − f`` honest, then ``f`` Byzantine.

    Honest row ``i``: ``μ + σ_i ε_i`` with a common direction ``μ`` (entries
    N(0, 0.25)) and client-specific noise ``σ_i ~ U(0.5, 1.5)`` (heterogeneous
    clients, so rules have real choices to make). Byzantine rows: the first half
    a colluding sign flip ``−2μ + ε``, the rest random faults ``3ε``.
    """
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(d, dtype=np.float32) * np.float32(0.5)
    sigma = rng.uniform(0.5, 1.5, n).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    flips = f // 2 + f % 2
    for i in range(n):
        rng.standard_normal(d, dtype=np.float32, out=x[i])
        if i < n - f:
            x[i] *= sigma[i]
            x[i] += mu
        elif i < n - f + flips:
            x[i] -= 2.0 * mu
        else:
            x[i] *= np.float32(3.0)
    return x


def replies_from_updates(
    updates: np.ndarray, theta: dict[str, np.ndarray] | None = None
) -> Fixture:
    """Replies ``θ + Δ_i``, one per row of the ``(n, d)`` updates, in the arrays of
    the model ``theta`` (default: zeros split into 16 arrays as a model's layers
    would be)."""
    n, d = updates.shape
    if theta is None:
        theta = {
            f"layer{i}": np.zeros(s, dtype=np.float32) for i, s in enumerate(_split(d))
        }
    arrays = []
    for row in updates:
        start, layers = 0, {}
        for key, value in theta.items():
            part = row[start : start + value.size].reshape(value.shape)
            layers[key] = Array(np.ascontiguousarray(value + part))
            start += value.size
        arrays.append(layers)
    record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in theta.items()})
    return Fixture(d, n, record, arrays, list(range(1, n + 1)))


def build_replies(n: int, d: int, f: int, seed: int = 0) -> Fixture:
    """:func:`replies_from_updates` of :func:`scale_updates`."""
    return replies_from_updates(scale_updates(n, d, f, seed))


def gaa_setup(n: int, f: int, seed: int = 0) -> tuple[Fixture, Callable[[], GAA]]:
    """Replies for the Healthcare-style model (MLP 1024-32-10, 33,130 parameters)
    and a GAA factory with its QV set: the updates of :func:`scale_updates`,
    scaled to a learning step, in the model's own layers."""
    server = load_server_data(
        {"dataset": "healthcare-style", "seed": seed, "qv-size": 10}, n
    )

    def factory() -> torch.nn.Module:
        return build_model("auto", server.num_features, server.num_classes)

    torch.manual_seed(seed)
    state = {k: v.detach().numpy() for k, v in factory().state_dict().items()}
    d = sum(v.size for v in state.values())
    updates = scale_updates(n, d, f, seed) * np.float32(0.01)
    replies = replies_from_updates(updates, state)

    def make() -> GAA:
        return GAA(
            model_factory=factory,
            qv_set=(server.qv.features, server.qv.labels),
            seed=seed,
            fraction_evaluate=0.0,
        )

    return replies, make


def floor_seconds(replies: Fixture) -> float:
    """One copy of the replies' bytes into an (n, d) float32 matrix + X Xᵀ."""
    matrix = np.empty((replies.n, replies.d), dtype=np.float32)
    return bench_strategies.floor_seconds(replies, matrix)[0]


def time_strategy(replies: Fixture, strategy, ours: bool) -> tuple[float, float]:
    """Seconds of one ``aggregate_train`` and the peak extra RSS (MB) during it;
    every strategy is new, so it allocates its update matrix in the call."""
    return bench_strategies.time_once(replies, strategy, ours, warm=False)


#: Flower's Bulyan selects per coordinate in numpy on one core: 4 s at n = 50,
#: d = 33k, and past 6 minutes at n = 1000 (not finished), so it runs up to here.
FLOWER_BULYAN_MAX_N = 50

Pair = tuple[str, Callable[[], object], Callable[[], object] | None]


def pairs(n: int, f: int, k: int) -> list[Pair]:
    """(name, ours, Flower's counterpart or None) at ``n`` replies, budget ``f``."""
    fb = (n - 3) // 4  # Bulyan's largest budget
    sk = {"distance_sketch": k}
    out: list[Pair] = [
        ("FedAvg (Flower)", flwr_strategies.FedAvg, None),
        ("Mean", ours.Mean, flwr_strategies.FedAvg),
    ]
    for label, extra in (("", {}), (f" sketch k={k}", sk)):
        out += [
            (
                "Krum" + label,
                lambda e=extra: ours.Krum(num_malicious_nodes=f, **e),
                lambda: flwr_strategies.Krum(num_malicious_nodes=f),
            ),
            (
                "MultiKrum" + label,
                lambda e=extra: ours.MultiKrum(num_malicious_nodes=f, **e),
                lambda: flwr_strategies.MultiKrum(
                    num_malicious_nodes=f, num_nodes_to_select=n - f
                ),
            ),
            (
                "Bulyan" + label,
                lambda e=extra: ours.Bulyan(num_malicious_nodes=fb, **e),
                (lambda: flwr_strategies.Bulyan(num_malicious_nodes=fb))
                if n <= FLOWER_BULYAN_MAX_N
                else None,
            ),
            (
                "FABA" + label,
                lambda e=extra: ours.FABA(num_malicious_nodes=f, **e),
                None,
            ),
            (
                "GeoMed" + label,
                lambda e=extra: ours.GeoMed(num_malicious_nodes=f, **e),
                None,
            ),
        ]
    out += [
        ("Median", ours.Median, flwr_strategies.FedMedian),
        (
            "TrimmedMean",
            lambda: ours.TrimmedMean(beta=0.2),
            lambda: flwr_strategies.FedTrimmedAvg(beta=0.2),
        ),
    ]
    return out


def run(
    ns: list[int], dims: list[int], k: int, repeats: int, skip: set[str]
) -> list[dict]:
    """One row per (n, d, rule)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    rows = []
    for d in dims:
        for n in ns:
            f = n // 5
            replies = build_replies(n, d, f)
            reps = repeats if n * d <= 50_000_000 else 1
            if n * d <= 2_000_000 and repeats > 1:  # ms a call: more runs
                reps *= 3
            floor = min(floor_seconds(replies) for _ in range(reps))
            print(f"\n## n = {n}, d = {d:,}, f = {f}: floor {floor:.3f} s", flush=True)
            time_strategy(replies, ours.Mean(), True)  # library warm-up, untimed
            fedavg = None
            for name, make_ours, make_theirs in pairs(n, f, k):
                if any(s in name for s in skip):
                    continue
                t_ours = t_flwr = paired = math.inf
                mb_ours = mb_flwr = 0.0
                is_flower = name.endswith("(Flower)")
                for _ in range(reps):
                    # The floor is sampled right before each timed call: a rule
                    # is compared best to best over as many runs as it had, on
                    # the machine as it was then.
                    paired = min(paired, floor_seconds(replies))
                    s, mb = time_strategy(replies, make_ours(), not is_flower)
                    t_ours, mb_ours = min(t_ours, s), max(mb_ours, mb)
                    if make_theirs is not None and "sketch" not in name:
                        s, mb = time_strategy(replies, make_theirs(), False)
                        t_flwr, mb_flwr = min(t_flwr, s), max(mb_flwr, mb)
                if is_flower:
                    fedavg = t_ours
                row = {
                    "n": n,
                    "d": d,
                    "rule": name,
                    "ours_s": t_ours,
                    "flower_s": t_flwr if math.isfinite(t_flwr) else None,
                    "floor_s": paired,
                    "fedavg_s": fedavg,
                    "ours_peak_mb": mb_ours,
                    "flower_peak_mb": mb_flwr if math.isfinite(t_flwr) else None,
                    "matrix_mb": n * d * 4 / 2**20,
                }
                rows.append(row)
                print(
                    f"  {name:26s} {t_ours:8.3f} s (+{mb_ours:6.0f} MB)"
                    + (
                        f" | Flower {t_flwr:8.3f} s (+{mb_flwr:6.0f} MB)"
                        f" | Flower/ours {t_flwr / t_ours:5.2f}"
                        if math.isfinite(t_flwr)
                        else ""
                    )
                    + f" | ours/floor {t_ours / paired:5.2f}",
                    flush=True,
                )
            del replies
            gc.collect()
    if "GAA" not in skip:
        rows += run_gaa(ns, repeats)
    _add_counterparts(rows)
    return rows


def run_gaa(ns: list[int], repeats: int) -> list[dict]:
    """GAA's server-side round (QV evaluations, policy, step) next to Flower's
    FedAvg on the same replies, on the Healthcare-style model. GAA is timed over
    ``2 × episode length`` rounds (its policy update included), per round."""
    rows = []
    for n in ns:
        f = n // 5
        replies, make = gaa_setup(n, f)
        floor = floor_seconds(replies)
        fedavg = min(
            time_strategy(replies, flwr_strategies.FedAvg(), False)[0]
            for _ in range(max(repeats, 2))
        )
        strategy = make()
        rounds = 2 * strategy.agent.window
        seconds, peak = [], 0.0
        for rnd in range(1, rounds + 1):
            nodes = dict.fromkeys(range(1, n + 1), "train")
            strategy.remember_sent(rnd, replies.theta, nodes)
            messages = bench_strategies.fresh_replies(replies)
            gc.collect()
            with _PeakRss() as mem:
                t0 = time.perf_counter()
                strategy.aggregate_train(rnd, messages)
                seconds.append(time.perf_counter() - t0)
            peak = max(peak, mem.extra_mb)
        mean = sum(seconds[1:]) / (rounds - 1)  # the first round warms up
        print(
            f"\n## GAA, n = {n}, d = {replies.d:,}: {mean * 1000:.1f} ms/round "
            f"(FedAvg {fedavg * 1000:.1f} ms, {mean / fedavg:.2f}×)",
            flush=True,
        )
        rows.append(
            {
                "n": n,
                "d": replies.d,
                "rule": "GAA",
                "ours_s": mean,
                "flower_s": None,
                "floor_s": floor,
                "fedavg_s": fedavg,
                "ours_peak_mb": peak,
                "flower_peak_mb": None,
                "matrix_mb": n * replies.d * 4 / 2**20,
            }
        )
        del replies
        gc.collect()
    return rows


def _add_counterparts(rows: list[dict]) -> None:
    """Sketched rows get Flower's time of their exact twin; FABA its Krum ratio."""
    by_key = {(r["n"], r["d"], r["rule"]): r for r in rows}
    for r in rows:
        base = r["rule"].split(" sketch")[0]
        twin = by_key.get((r["n"], r["d"], base))
        if r["flower_s"] is None and twin is not None and twin["flower_s"]:
            r["flower_s"] = twin["flower_s"]
        krum = by_key.get((r["n"], r["d"], "Krum" + r["rule"][len(base) :]))
        r["over_krum"] = r["ours_s"] / krum["ours_s"] if krum else None


def markdown(rows: list[dict]) -> str:
    """The rows as one Markdown table."""
    lines = [
        "| n | d | rule | ours (s) | Flower (s) | Flower ÷ ours | ours ÷ floor "
        "| ÷ FedAvg | ÷ our Krum | peak MB ÷ matrix |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        flwr = r["flower_s"]
        lines.append(
            f"| {r['n']} | {r['d']:,} | {r['rule']} | {r['ours_s']:.3f} | "
            + (f"{flwr:.3f} | {flwr / r['ours_s']:.2f}× | " if flwr else "– | – | ")
            + f"{r['ours_s'] / r['floor_s']:.2f} | "
            + (f"{r['ours_s'] / r['fedavg_s']:.2f} | " if r.get("fedavg_s") else "– | ")
            + (f"{r['over_krum']:.2f} | " if r.get("over_krum") else "– | ")
            + f"{r['ours_peak_mb'] / r['matrix_mb']:.2f} |"
        )
    return "\n".join(lines)


#: The exact distance rules of the targets table.
DISTANCE_RULES = ("Krum", "MultiKrum", "FABA", "GeoMed")


def targets(rows: list[dict]) -> str:
    """One line per (n, d): each exact distance rule ÷ the floor, Flower's Krum
    ÷ ours, our ``Mean`` against Flower's ``FedAvg`` in the runs taken in turns
    with it (all from the same run)."""
    by_key = {(r["n"], r["d"], r["rule"]): r for r in rows}
    sizes = list(dict.fromkeys((r["n"], r["d"]) for r in rows if r["rule"] != "GAA"))
    lines = [
        "| n | d | floor (s) | "
        + " | ".join(f"{name} ÷ floor" for name in DISTANCE_RULES)
        + " | Flower's Krum ÷ ours | Mean (s) | FedAvg (s) | Mean ÷ FedAvg |",
        "|---:|---:|---:|" + "---:|" * (len(DISTANCE_RULES) + 4),
    ]
    for n, d in sorted(sizes, key=lambda size: (size[1], size[0])):
        cells = [f"{n}", f"{d:,}"]
        floor = min(r["floor_s"] for r in rows if (r["n"], r["d"]) == (n, d))
        cells.append(f"{floor:.4f}")
        for name in DISTANCE_RULES:
            r = by_key.get((n, d, name))
            cells.append(f"{r['ours_s'] / r['floor_s']:.2f}" if r else "–")
        krum = by_key.get((n, d, "Krum"))
        cells.append(
            f"{krum['flower_s'] / krum['ours_s']:.2f}×"
            if krum and krum["flower_s"]
            else "–"
        )
        # Mean against the FedAvg runs interleaved with its own, as many.
        mean = by_key.get((n, d, "Mean"))
        if mean and mean["flower_s"]:
            cells += [
                f"{mean['ours_s']:.4f}",
                f"{mean['flower_s']:.4f}",
                f"{mean['ours_s'] / mean['flower_s']:.2f}",
            ]
        else:
            cells += ["–", "–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """Log-log seconds vs n per rule, one panel per d (docs/bench_scale.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r["d"] for r in rows})
    names = list(dict.fromkeys(r["rule"] for r in rows))
    colours = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(names)}
    fig, axes = plt.subplots(1, len(dims), figsize=(6 * len(dims), 4.8), squeeze=False)
    handles = {}
    for ax, d in zip(axes[0], dims, strict=True):
        sub = [r for r in rows if r["d"] == d]
        for name in names:
            pts = sorted((r["n"], r["ours_s"]) for r in sub if r["rule"] == name)
            if not pts:
                continue
            style = "--" if "sketch" in name else "-"
            (line,) = ax.plot(
                *zip(*pts, strict=True), style, marker="o", color=colours[name]
            )
            handles[name] = line
        pts = sorted(
            (r["n"], r["flower_s"])
            for r in sub
            if r["rule"] == "Krum" and r["flower_s"]
        )
        if pts:
            (line,) = ax.plot(*zip(*pts, strict=True), ":", color="k", marker="x")
            handles["Flower's Krum"] = line
        floors: dict[int, float] = {}
        for r in sub:
            floors[r["n"]] = min(floors.get(r["n"], math.inf), r["floor_s"])
        (line,) = ax.plot(
            *zip(*sorted(floors.items()), strict=True), color="grey", lw=4, alpha=0.4
        )
        handles["floor: copy + one Gram product"] = line
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients per round n")
        ax.set_ylabel("aggregate_train (s)")
        ax.set_title(f"d = {d:,} parameters")
        ax.grid(True, which="both", alpha=0.3)
    fig.legend(handles.values(), handles.keys(), fontsize=7, loc="center right", ncol=1)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", default="10,50,200,500,1000", help="clients per round")
    parser.add_argument("--dims", default="20000,33130,1000000", help="model sizes")
    parser.add_argument(
        "--k", type=int, default=DEFAULT_SKETCH_DIM, help="sketch width (default 4096)"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per rule up to n·d = 5e7 (else 1)"
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated rule-name parts not to run"
    )
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--plot", default=None, help="also draw the log-log plot here")
    args = parser.parse_args(argv)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"numpy {np.__version__}"
    )
    ns = [int(v) for v in args.ns.split(",") if v]
    dims = [int(v) for v in args.dims.split(",") if v]
    skip = {s for s in args.skip.split(",") if s}
    rows = run(ns, dims, args.k, args.repeats, skip)
    print("\n" + markdown(rows))
    print("\n## Targets\n\n" + targets(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
