"""Whole-round time of robust strategies ÷ Flower's FedAvg, in the same simulations.

The GAA paper's Table 3 reports GAA's round time at 1.29–1.65× plain averaging.
This runs the app once per strategy through Flower's simulation engine (one private
SuperLink, identical run config and seed; only ``strategy`` differs) and prints each
strategy's mean round time (rounds after the first, which pays for warm-up) as a
ratio to FedAvg's measured in the same invocation.

Run::

    python -m benchmarks.bench_round_time --strategies gaa,faba \\
        --dataset yelp-style --supernodes 10 --rounds 10
    python -m benchmarks.bench_round_time --strategies gaa \\
        --dataset healthcare-style --supernodes 50 --rounds 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from flwr_byz.experiments.grid import GridSpec
from flwr_byz.experiments.grid_runner import run_grid

REPO = Path(__file__).resolve().parents[1]


def mean_round_time(results: dict) -> float:
    """Mean ``round-time-s`` over the rounds after the first."""
    times = [e["round-time-s"] for e in results["rounds"] if e["round"] >= 2]
    return statistics.mean(times)


def main() -> None:
    """Run the strategies and FedAvg; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", default="gaa")
    parser.add_argument("--dataset", default="yelp-style")
    parser.add_argument("--supernodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--attack", default="random-fault")
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--app", default=str(REPO))
    parser.add_argument(
        "--jobs", type=int, default=1, help="simulations at once (default: 1)"
    )
    args = parser.parse_args()

    strategies = ["fedavg", *[s for s in args.strategies.split(",") if s]]
    with tempfile.TemporaryDirectory(prefix="bench-rounds-") as out:
        spec = GridSpec.of(
            strategies=strategies,
            attacks=[args.attack],
            byzantine_fractions=[args.fraction],
            seeds=[args.seed],
            num_supernodes=args.supernodes,
            base_config={"num-server-rounds": args.rounds, "dataset": args.dataset},
        )
        paths = run_grid(spec, args.app, out, echo=False, jobs=args.jobs)
        runs = [json.loads(p.read_text()) for p in paths]

    base = mean_round_time(runs[0])
    print(
        f"\n{args.dataset}, {args.supernodes} clients, {args.rounds} rounds, "
        f"attack {args.attack} at {args.fraction}; mean round time after round 1:"
    )
    print("| strategy | round time (s) | ÷ FedAvg | final accuracy |")
    print("|---|---|---|---|")
    for name, run in zip(strategies, runs, strict=True):
        t = mean_round_time(run)
        acc = run["summary"]["final-accuracy"]
        print(f"| {name} | {t:.3f} | {t / base:.2f}× | {100 * acc:.1f} % |")


if __name__ == "__main__":
    main()
