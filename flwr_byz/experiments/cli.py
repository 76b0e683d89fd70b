"""``flwr-byz``: run an experiment grid, and turn finished runs into tables and plots.

Examples
--------
    flwr-byz grid --strategies faba,krum,median,gaa --attacks random-fault,alie \\
        --fractions 0.3,0.7 --seeds 0,1 --rounds 20 --out results/grid
    flwr-byz grid flwr_byz/experiments/grids/defences.toml --jobs 4
    flwr-byz grid flwr_byz/experiments/grids/defences.toml --ray-address auto
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
from flwr_byz.experiments.grid import (
    DEFAULT_SUPERNODES,
    SUPERNODES,
    GridSpec,
    check_grid,
)
from flwr_byz.experiments.grid_file import load_grid_file
from flwr_byz.experiments.grid_runner import (
    MIN_CELL_CPUS,
    GridError,
    check_cluster_jobs,
    check_federation_config,
    default_jobs,
    run_grid,
)
from flwr_byz.experiments.plots import plot_accuracy, plot_credits
from flwr_byz.experiments.tables import load_results, write_tables


def _csv(kind: type) -> object:
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flwr-byz", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    grid = sub.add_parser(
        "grid",
        help="run defences × attacks × fractions × seeds (or a grid file)",
        description="Run a grid of experiments: from the flags, or from a grid file "
        "whose values the flags given here override in every group.",
    )
    grid.add_argument(
        "grid_file",
        nargs="?",
        metavar="GRID.toml",
        help="a grid file: [axes] (lists of values), [set] (shared values), "
        "[[group]] (more cells) and 'out'; see README 'Grid files'. Flags given "
        "here win over the file in every group",
    )
    grid.add_argument(
        "--strategies",
        type=_csv(str),
        help="comma-separated ('strategy' axis; default faba,gaa); 'all' = every "
        f"strategy (the rule registry, GAA, FedAvg): {', '.join(STRATEGY_NAMES)}",
    )
    grid.add_argument(
        "--attacks",
        type=_csv(str),
        help="comma-separated attacks ('attack' axis; default none,random-fault); "
        "'none' pairs only with fraction 0",
    )
    grid.add_argument(
        "--fractions",
        type=_csv(float),
        help="comma-separated real Byzantine fractions ('byzantine-fraction' axis; "
        "default 0,0.3)",
    )
    grid.add_argument(
        "--seeds", type=_csv(int), help="comma-separated seeds ('seed' axis; default 0)"
    )
    grid.add_argument(
        "--rounds",
        type=int,
        help="rounds per cell ('num-server-rounds'; default 20)",
    )
    grid.add_argument(
        "--supernodes",
        type=int,
        help=f"simulated SuperNodes per cell, one per partition (default "
        f"{DEFAULT_SUPERNODES}; other sizes are part of the cell's folder name)",
    )
    grid.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other run-config key for every cell (repeatable)",
    )
    grid.add_argument(
        "--app", default=".", help="the Flower app directory (default: .)"
    )
    grid.add_argument(
        "--out",
        help="output directory (default: the grid file's 'out', else results/grid): "
        "one folder per cell (named by every value that differs from the "
        "defaults), summary tables and plots",
    )
    grid.add_argument(
        "--jobs",
        type=_positive_int,
        help="cells run at once, each on its own private SuperLink with an equal "
        f"share of the CPUs (at least {MIN_CELL_CPUS}); default: one per "
        f"{MIN_CELL_CPUS} CPUs (here {default_jobs()}); with --ray-address: 1, "
        "the only value (each cell's ClientApps fill the whole cluster)",
    )
    grid.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="run every cell's ClientApps on this existing Ray cluster ('auto' on "
        "its head node, or HEAD:PORT of 'ray start --head'), one cell at a time, "
        "instead of a private Ray instance per cell; SuperLink and ServerApp stay "
        "on this machine. See README 'A grid on a Ray cluster'",
    )
    grid.add_argument(
        "--federation-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Flower simulation setting for every cell, as 'flwr run "
        "--federation-config' takes it (repeatable): client-resources-num-cpus "
        "(integer; also the threads a ClientApp trains with), "
        "client-resources-num-gpus (fraction of a GPU per ClientApp), "
        "init-args-num-cpus, ...; not part of a cell's folder name",
    )
    grid.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds between two round-progress lines of a running cell "
        "(0: every round; default 30)",
    )
    grid.add_argument(
        "--dry-run",
        action="store_true",
        help="validate every cell and list them; run nothing",
    )

    report = sub.add_parser(
        "report",
        help="tables and plots of a grid's results",
        description="Write summary.md, summary.csv and plots/ for a grid's output "
        "directory.",
    )
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


def _key_values(items: Sequence[str], flag: str) -> dict[str, object]:
    """``KEY=VALUE`` items of a repeatable flag, values parsed (int, float, bool)."""
    values: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        values[key.strip()] = _parse_value(value.strip())
    return values


def _grid_spec(args: argparse.Namespace) -> tuple[GridSpec, str]:
    """The grid of the command line: the file's (or the default one) with the flags
    given on top; and the output directory."""
    axes: dict[str, list] = {}
    if args.strategies is not None:
        axes["strategy"] = (
            list(STRATEGY_NAMES) if args.strategies == ["all"] else args.strategies
        )
    for key, value in (
        ("attack", args.attacks),
        ("byzantine-fraction", args.fractions),
        ("seed", args.seeds),
    ):
        if value is not None:
            axes[key] = value
    settings: dict[str, object] = {}
    if args.rounds is not None:
        settings["num-server-rounds"] = args.rounds
    if args.supernodes is not None:
        settings[SUPERNODES] = args.supernodes
    settings.update(_key_values(args.set, "--set"))
    if args.grid_file is not None:
        grid_file = load_grid_file(args.grid_file)
        base, out = grid_file.spec, grid_file.out
    else:
        base, out = _DEFAULT_GRID, None
    return base.overridden(axes, settings), args.out or out or "results/grid"


# The grid of `flwr-byz grid` without a file.
_DEFAULT_GRID = GridSpec.of(
    strategies=["faba", "gaa"],
    attacks=["none", "random-fault"],
    byzantine_fractions=[0.0, 0.3],
    seeds=[0],
    base_config={"num-server-rounds": 20},
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flwr-byz`` command."""
    args = _parser().parse_args(argv)
    if args.command == "report":
        _report(Path(args.out))
        return 0

    try:
        spec, out = _grid_spec(args)
        cells = check_grid(spec)
        federation_config = _key_values(args.federation_config, "--federation-config")
        check_federation_config(federation_config, args.ray_address)
        if args.ray_address is not None:
            check_cluster_jobs(args.jobs or 1)
    except ValueError as err:
        print(f"flwr-byz grid: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for cell in cells:
            print(
                f"{cell.describe()}: supernodes={cell.supernodes} {dict(cell.config)}"
            )
        print(f"{len(cells)} cells")
        return 0
    # On a cluster each cell's actor pool takes every node: one cell at a time.
    jobs = args.jobs or (1 if args.ray_address is not None else default_jobs())
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C, so the private SuperLinks
    # and everything they started are stopped by their context managers.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_grid(
            spec,
            args.app,
            out,
            jobs=jobs,
            progress_every=args.progress_every,
            ray_address=args.ray_address,
            federation_config=federation_config,
        )
    except KeyboardInterrupt:
        print("flwr-byz grid: interrupted; finished cells are kept", file=sys.stderr)
        return 130
    except GridError as err:
        print(
            f"flwr-byz grid: {err}\nflwr-byz grid: finished cells are kept",
            file=sys.stderr,
        )
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    _report(Path(out))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
