"""``flwr-byz``: run an experiment grid, and turn finished runs into tables and plots.

Examples
--------
    flwr-byz grid --strategies faba,krum,median,gaa --attacks random-fault,alie \\
        --fractions 0.3,0.7 --seeds 0,1 --rounds 20 --out results/grid
    flwr-byz report results/grid
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from flwr_byz.app.config import STRATEGY_NAMES
from flwr_byz.experiments.grid import GridSpec, check_grid, run_grid
from flwr_byz.experiments.plots import plot_accuracy, plot_credits
from flwr_byz.experiments.tables import load_results, write_tables


def _csv(kind: type) -> object:
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flwr-byz", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    grid = sub.add_parser("grid", help="run defences × attacks × fractions × seeds")
    grid.add_argument(
        "--strategies",
        type=_csv(str),
        default=["faba", "gaa"],
        help="comma-separated; 'all' = every strategy (the rule registry, GAA, "
        f"FedAvg): {', '.join(STRATEGY_NAMES)}",
    )
    grid.add_argument(
        "--attacks",
        type=_csv(str),
        default=["none", "random-fault"],
        help="comma-separated attacks ('none' pairs only with fraction 0)",
    )
    grid.add_argument(
        "--fractions",
        type=_csv(float),
        default=[0.0, 0.3],
        help="comma-separated real Byzantine fractions ('byzantine-fraction')",
    )
    grid.add_argument(
        "--seeds", type=_csv(int), default=[0], help="comma-separated seeds"
    )
    grid.add_argument(
        "--rounds", type=int, default=20, help="rounds per cell ('num-server-rounds')"
    )
    grid.add_argument(
        "--supernodes",
        type=int,
        default=10,
        help="simulated SuperNodes per cell (one per partition)",
    )
    grid.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other run-config key for every cell (repeatable)",
    )
    grid.add_argument("--app", default=".", help="the Flower app directory")
    grid.add_argument(
        "--out",
        default="results/grid",
        help="output directory: one folder per cell (named by every value that "
        "differs from the defaults), summary tables and plots",
    )
    grid.add_argument(
        "--dry-run", action="store_true", help="validate and list the cells only"
    )

    report = sub.add_parser("report", help="tables and plots of a grid's results")
    report.add_argument("out", help="the grid's output directory")
    return parser


def _parse_value(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _report(out: Path) -> None:
    paths = sorted(out.glob("*/results.json"))
    runs = load_results(paths)
    md = write_tables(runs, out)
    print(md.read_text())
    try:
        for path in plot_accuracy(runs, out / "plots"):
            print(f"plot: {path}")
        for path in paths:
            run = json.loads(path.read_text())
            if run.get("summary") is None:
                continue
            trace = plot_credits(
                run, out / "plots" / f"credits__{path.parent.name}.png"
            )
            if trace is not None:
                print(f"plot: {trace}")
    except ImportError as err:
        print(f"(no plots: {err})")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flwr-byz`` command."""
    args = _parser().parse_args(argv)
    if args.command == "report":
        _report(Path(args.out))
        return 0

    base: dict[str, object] = {"num-server-rounds": args.rounds}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"--set expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        base[key.strip()] = _parse_value(value.strip())
    strategies = list(STRATEGY_NAMES) if args.strategies == ["all"] else args.strategies
    spec = GridSpec(
        strategies=strategies,
        attacks=args.attacks,
        byzantine_fractions=args.fractions,
        seeds=args.seeds,
        num_supernodes=args.supernodes,
        base_config=base,
    )
    try:
        cells = check_grid(spec)
    except ValueError as err:
        print(f"flwr-byz grid: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for cell in cells:
            print(cell)
        return 0
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C, so the private SuperLink
    # and everything it started are stopped by their context manager.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_grid(spec, args.app, args.out)
    except KeyboardInterrupt:
        print("flwr-byz grid: interrupted; finished cells are kept", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    _report(Path(args.out))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
