"""``results.json``: one run's configuration, ground truth and per-round record.

The file is rewritten atomically after every round, so an interrupted run keeps
every round it finished and a reader never sees half a file. Its ``status`` says
whether the run is running, completed, failed or was interrupted.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from flwr_byz.app.config import RunConfigError


def package_versions() -> dict[str, str]:
    """Versions of what produced the numbers (for the record, not for checks)."""
    versions = {"python": platform.python_version()}
    for dist in ("flwr-byz", "flwr", "torch", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


#: ``results.json``'s ``status``: ``running`` while rounds are played (and left so
#: by a process killed outright), ``completed`` with the summary, ``failed`` with the
#: exception text in ``error``, ``interrupted`` (a signal, a lost SuperLink, too few
#: nodes within ``node-wait-timeout``, fault injection) with the reason in
#: ``error``. A ``running`` or ``interrupted`` run
#: continues from its checkpoint with ``resume``.
STATUSES = ("running", "completed", "failed", "interrupted")

RESULTS_FILE = "results.json"


class RunDirectoryError(RunConfigError):
    """A run directory that holds another run's results; the message says what to do."""


class RunInterruptedError(RuntimeError):
    """The run stopped before its end for a reason outside the experiment: a signal
    or fault injection (``fault-stop-after-round``)."""


def _interruptions() -> tuple[type[BaseException], ...]:
    from flwr_byz.strategy.sampling import NotEnoughNodesError

    kinds: list[type[BaseException]] = [
        RunInterruptedError,
        NotEnoughNodesError,  # the nodes went away: resume once they are back
        KeyboardInterrupt,
        SystemExit,
        ConnectionError,
    ]
    try:  # the grid's transports: a SuperLink that went away
        import httpx

        kinds.append(httpx.TransportError)
    except ImportError:  # pragma: no cover - Flower depends on httpx
        pass
    try:
        import grpc

        kinds.append(grpc.RpcError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


def status_of(err: BaseException) -> str:
    """``interrupted`` for a signal, a lost connection, nodes that went away or
    fault injection, else ``failed``."""
    return "interrupted" if isinstance(err, _interruptions()) else "failed"


def expand_run_dir(output_dir: str, run_name: str) -> Path:
    """The run directory ``output_dir`` names, ``{run}`` replaced by ``run_name``."""
    return Path(output_dir.replace("{run}", run_name)).expanduser().resolve()


def check_unused(run_dir: Path) -> None:
    """Refuse a directory that holds another run's ``results.json`` or checkpoint.

    Raises
    ------
    RunDirectoryError
        Naming the run found there (its status and last round) and the ways out.
    """
    from flwr_byz.app.checkpoint import CHECKPOINT_FILE

    found = [n for n in (RESULTS_FILE, CHECKPOINT_FILE) if (run_dir / n).exists()]
    if not found:
        return
    about = describe_run(run_dir / RESULTS_FILE)
    raise RunDirectoryError(
        f"run-config key 'output-dir': {run_dir} already holds {' and '.join(found)} "
        f"of another run ({about}); no run overwrites another's results. Give another "
        "'output-dir' (e.g. one with '{run}' in it: a new directory per run), move "
        "that directory away, or continue that run with resume = "
        f"'{run_dir}'"
    )


def describe_run(path: Path) -> str:
    """A few words on the run of a ``results.json``: status, last round, start."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return "results.json missing or unreadable"
    rounds = data.get("rounds") or [{}]
    last = rounds[-1]
    status = data.get("status", "no status: written by an older flwr-byz")
    return (
        f"status {status}, last round {last.get('round', '?')} of episode "
        f"{last.get('episode', 1)}, started {data.get('started', '?')}"
    )


class ResultsFile:
    """The ``results.json`` of one run, flushed after every round.

    Parameters
    ----------
    output_dir : str | Path
        The run directory to write ``results.json`` into (created if missing). A
        fresh run claims the file: it refuses one that exists.
    config : dict
        The full, validated run config.
    ground_truth : dict
        Which partition ids and node ids were Byzantine, and the node → partition
        map; the defence never reads this.
    restored : dict, optional
        A resumed run's record so far (from its checkpoint): it replaces the fresh
        record and the existing file.
    """

    def __init__(
        self,
        output_dir: str | Path,
        config: dict[str, Any],
        ground_truth: dict,
        *,
        restored: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(output_dir).resolve() / RESULTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if restored is not None:
            self.data: dict[str, Any] = dict(restored)
            self.data["ground-truth"] = ground_truth
            self.data["status"] = "running"
            self.data.pop("error", None)
        else:
            try:  # claim the file: two runs never share a directory
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                check_unused(self.path.parent)
                raise
            self.data = {
                "config": dict(config),
                "versions": package_versions(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "status": "running",
                "ground-truth": ground_truth,
                "rounds": [],
                "summary": None,
            }
        self.flush()

    @property
    def status(self) -> str:
        """``running``, ``completed``, ``failed`` or ``interrupted``."""
        return str(self.data["status"])

    def add_round(self, entry: dict[str, Any]) -> None:
        """Append one round's entry and flush."""
        self.data["rounds"].append(entry)
        self.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        """Store the run's summary, mark it completed and flush."""
        self.data["summary"] = summary
        self.data["status"] = "completed"
        self.flush()

    def stop(self, err: BaseException) -> None:
        """Mark the run failed or interrupted (:func:`status_of`) and flush."""
        self.data["status"] = status_of(err)
        text = str(err).strip()
        self.data["error"] = (
            f"{type(err).__name__}: {text}" if text else type(err).__name__
        )
        self.flush()

    def flush(self) -> None:
        """Write the whole file atomically (temporary file + rename).

        The file is strict JSON whatever the numbers: a non-finite float (a score
        of an update too large for float32, a diverged loss) is written as the
        string ``"inf"``, ``"-inf"`` or ``"nan"`` instead of stopping the run.
        """
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(finite_json(self.data), handle, indent=1, allow_nan=False)
        os.replace(tmp, self.path)


def finite_json(value: Any) -> Any:
    """``value`` with each non-finite float as the string "inf", "-inf" or "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def without_timings(results: dict[str, Any]) -> dict[str, Any]:
    """A copy of a results dict without wall-clock fields and node ids.

    Two runs with the same seed must agree on everything this returns. Node ids
    are drawn afresh by every simulation; partition ids are what repeats.
    """

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: strip(v)
                for k, v in value.items()
                if not (
                    k.endswith(("-time-s", "node-ids", "node-id", "node-partitions"))
                    or k == "started"
                )
            }
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(results)
