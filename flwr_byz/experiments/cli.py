"""``flwr-byz``: run an experiment grid, and turn finished runs into tables and plots.

Examples
--------
    flwr-byz grid --strategies faba,krum,median,gaa --attacks random-fault,alie \\
        --fractions 0.3,0.7 --seeds 0,1 --rounds 20 --out results/grid
    flwr-byz grid flwr_byz/experiments/grids/defences.toml --jobs 4
    flwr-byz grid flwr_byz/experiments/grids/defences.toml --ray-address auto
    flwr-byz report results/grid
    flwr-byz run . --run-config "strategy='faba'"   # exits with the run's status
    flwr-byz status results/20250101-120000-4242424242
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from flwr_byz.app.config import STRATEGY_NAMES
from flwr_byz.app.results import (
    RESULTS_FILE,
    RESULTS_LINE,
    STATUS_LINE,
    STATUSES,
    run_health,
    status_line,
)
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
        "[[group]] (more cells) and 'out'; see docs/experiments.md. Flags given "
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
        "on this machine. See docs/experiments.md, 'A grid on a Ray cluster'",
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

    codes = ", ".join(f"{code} {name}" for name, code in EXIT_CODES.items())
    run = sub.add_parser(
        "run",
        help="flwr run --stream, exiting with the run's recorded status",
        description="Run 'flwr run [APP_DIR] [ARGS...] --stream' (every argument "
        "goes to flwr run; --stream is added), show its output, then read the "
        "run's own results.json (its path is in the ServerApp's log) and exit "
        f"with its status: {codes}.",
    )
    run.add_argument(
        "flwr_args",
        nargs=argparse.REMAINDER,
        metavar="[APP_DIR] [FLWR RUN ARGS...]",
        help="as for flwr run",
    )
    status = sub.add_parser(
        "status",
        help="a run's status and why, as an exit code",
        description=f"Print a run's status and reason; exit with {codes}.",
    )
    status.add_argument("run", help="a run directory or its results.json")
    return parser


#: Exit code of ``flwr-byz run`` and ``flwr-byz status`` for each recorded status
#: (and when no results were found). 2 is a usage error.
EXIT_CODES = {
    "completed": 0,
    "failed": 1,
    "interrupted": 3,
    "degraded": 4,
    "running": 5,
    "no results": 6,
}
assert set(EXIT_CODES) == {*STATUSES, "no results"}


def run_status(path: Path) -> tuple[str, str]:
    """``(status, reason)`` of the run whose directory or ``results.json`` is
    ``path``; ``("no results", why)`` when there is none to read.

    A run recorded ``completed`` is judged again from its rounds
    (:func:`~flwr_byz.app.results.run_health`), so a file written before that
    verdict existed does not pass for healthy when no round updated the model.
    """
    file = path / RESULTS_FILE if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        return "no results", f"no {file}"
    except (OSError, ValueError) as err:
        return "no results", f"{file} is unreadable: {err}"
    if not isinstance(data, dict):
        return "no results", f"{file} is not a results.json"
    status = str(data.get("status") or ("completed" if data.get("summary") else ""))
    if status not in STATUSES:
        return "no results", f"{file} has no known status ({status or 'none'})"
    reason = str(
        data.get("reason")
        or data.get("error")
        or (data.get("summary") or {}).get("stopped")
        or ""
    )
    if status == "completed":
        judged, why = run_health(list(data.get("rounds") or []))
        if judged != "completed":
            status, reason = judged, f"{why} (recorded completed)"
    return status, reason


def _status_command(path: str) -> int:
    status, reason = run_status(Path(path))
    print(status_line(status, reason))
    return EXIT_CODES[status]


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RESULTS = re.compile(re.escape(RESULTS_LINE) + r"(.*\S)\s*$")
_STATUS = re.compile(re.escape(STATUS_LINE) + r"([a-z]+)(?:: (.*\S))?\s*$")


def _flwr() -> str:
    beside = Path(sys.executable).parent / "flwr"
    return str(beside) if beside.exists() else (shutil.which("flwr") or "flwr")


def _run_command(flwr_args: list[str]) -> int:
    """``flwr run ... --stream``, its output passed through; exit with the run's
    recorded status (:data:`EXIT_CODES`)."""
    command = [_flwr(), "run", *flwr_args]
    if "--stream" not in flwr_args:
        command.append("--stream")
    results: Path | None = None
    streamed: tuple[str, str] | None = None
    try:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
    except OSError as err:
        print(f"flwr-byz run: cannot start flwr: {err}", file=sys.stderr)
        return EXIT_CODES["no results"]
    assert process.stdout is not None
    try:
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            text = _ANSI.sub("", line)
            if found := _RESULTS.search(text):
                results = Path(found.group(1))
            elif found := _STATUS.search(text):
                streamed = (found.group(1), found.group(2) or "")
        code = process.wait()
    except KeyboardInterrupt:
        process.wait()
        print(
            "flwr-byz run: interrupted; the run may go on on the SuperLink (see "
            "'flwr ls', stop it with 'flwr stop <run-id>')",
            file=sys.stderr,
        )
        return 130
    status, reason = _ended_run_status(results, streamed, code)
    print(status_line(status, reason), flush=True)
    return EXIT_CODES[status]


def _ended_run_status(
    results: Path | None, streamed: tuple[str, str] | None, code: int
) -> tuple[str, str]:
    """The status of a run whose ``flwr run --stream`` ended with ``code``: its
    ``results.json`` where readable here, else the status line it streamed."""
    if results is not None:
        status, reason = run_status(results)
        if status == "running":  # nothing runs it any more, or nothing we see
            return "interrupted", (
                f"{results} still says running after 'flwr run' ended: the "
                "ServerApp was stopped or killed before it recorded its end, or "
                "the log stream broke"
            )
        if status != "no results":
            return status, reason
    if streamed is not None and streamed[0] in STATUSES:
        return streamed
    where = f" ({results} is not readable here)" if results is not None else ""
    return "no results", (
        f"the run streamed neither its results.json nor its status{where}; "
        f"'flwr run' exited with code {code}"
    )


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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"] and not {"-h", "--help"} & set(argv[1:2]):
        # Everything after "run" is flwr run's, options included.
        return _run_command(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "status":
        return _status_command(args.run)
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
