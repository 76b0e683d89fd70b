"""``results.json``: one run's configuration, ground truth and per-round record.

The file is rewritten atomically after every round, so an interrupted run keeps
every round it finished and a reader never sees half a file. Its ``status`` says
whether the run is running, completed, failed or was interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.common import log

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
#: ``error``. A run that played all its rounds is ``completed`` only when most of
#: them updated the model (:func:`run_health`): else it is ``failed`` (no training
#: round updated the model) or ``degraded`` (fewer than half did), with the summary
#: and the reason in ``reason``. A ``running`` or ``interrupted`` run
#: continues from its checkpoint with ``resume``.
STATUSES = ("running", "completed", "degraded", "failed", "interrupted")

RESULTS_FILE = "results.json"
#: The run directory's checkpoint (:mod:`flwr_byz.app.checkpoint` writes it).
CHECKPOINT_FILE = "checkpoint.pt"

#: The ServerApp's log line (streamed by ``flwr run --stream``) that names the run's
#: own ``results.json``, once the run has claimed it; ``flwr-byz run`` reads it.
RESULTS_LINE = "flwr-byz results: "
#: The ServerApp's log line when the run ends: its status and, unless completed, why.
STATUS_LINE = "flwr-byz status: "


def recorded(err: BaseException) -> bool:
    """Whether a run's ``results.json`` (and status line) recorded ``err``."""
    return hasattr(err, "flwr_byz_status")


def status_line(status: str, reason: str = "") -> str:
    """``flwr-byz status: <status>[: <reason on one line>]``."""
    text = " ".join(str(reason).split())
    return f"{STATUS_LINE}{status}" + (f": {text}" if text else "")


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
        Naming the run found there (its status and last round) and the ways out;
        ``resume`` among them only where that run has rounds left to play.
    """
    found = [n for n in (RESULTS_FILE, CHECKPOINT_FILE) if (run_dir / n).exists()]
    if not found:
        return
    about = describe_run(run_dir / RESULTS_FILE)
    ways = (
        f"move that directory away, or continue that run with resume = '{run_dir}'"
        if resumable(run_dir / RESULTS_FILE)
        else "or move that directory away (that run played to its end: there is "
        "nothing to resume)"
    )
    raise RunDirectoryError(
        f"run-config key 'output-dir': {run_dir} already holds {' and '.join(found)} "
        f"of another run ({about}); no run overwrites another's results. Give another "
        f"'output-dir' (e.g. one with '{{run}}' in it: a new directory per run), {ways}"
    )


def resumable(path: Path) -> bool:
    """Whether the run of a ``results.json`` has rounds left that ``resume`` plays:
    ``running`` or ``interrupted``, or ``failed`` before its summary. A missing or
    unreadable file (a checkpoint alone) counts as resumable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return True
    status = data.get("status")
    if status in ("running", "interrupted"):
        return True
    return status == "failed" and data.get("summary") is None


def played_to_end(data: dict[str, Any]) -> bool:
    """Whether a ``results.json`` holds a run that played all its rounds: a summary
    and ``completed``, ``degraded`` or ``failed`` (no round updated the model); a
    file from before statuses counts by its summary."""
    status = data.get("status", "completed")
    return data.get("summary") is not None and status in (
        "completed",
        "degraded",
        "failed",
    )


def run_health(rounds: list[dict[str, Any]]) -> tuple[str, str]:
    """``(status, reason)`` of a run that played all its ``rounds`` entries.

    A training round updated the model when its strategy reported ``status`` 0
    (:class:`~flwr_byz.strategy.round_report.RoundStatus` ``OK``), or, for a
    strategy that reports none (Flower's ``FedAvg``), when the record says
    ``model-updated``. ``failed``: no training round did; ``degraded``: fewer
    than half did; else ``completed`` (reason ``""``).
    """
    training = [r for r in rounds if int(r.get("round", 0)) > 0]
    if not training:
        return "completed", ""
    stalled = [r for r in training if not _updated(r)]
    if not stalled or 2 * (len(training) - len(stalled)) >= len(training):
        return "completed", ""
    names: dict[str, int] = {}
    for entry in stalled:
        name = _stall_name(entry)
        names[name] = names.get(name, 0) + 1
    kinds = ", ".join(f"{name} ×{count}" for name, count in names.items())
    first = stalled[0]
    status = "failed" if len(stalled) == len(training) else "degraded"
    head = (
        "no training round updated the model"
        if status == "failed"
        else "fewer than half of the training rounds updated the model"
    )
    return status, (
        f"{head}: {len(stalled)} of {len(training)} rounds left it unchanged "
        f"({kinds}); round {first.get('round')}"
        + (f" of episode {first['episode']}" if first.get("episode", 1) != 1 else "")
        + f": {_replies_text(first)}"
    )


def _updated(entry: dict[str, Any]) -> bool:
    if "status" in entry:
        return int(entry["status"]) == 0
    return bool(entry.get("model-updated", True))


def _stall_name(entry: dict[str, Any]) -> str:
    if "status" not in entry:
        return "not-aggregated"
    from flwr_byz.strategy.round_report import RoundStatus

    try:
        return RoundStatus(int(entry["status"])).name.lower().replace("_", "-")
    except ValueError:
        return f"status-{entry['status']}"


def _replies_text(entry: dict[str, Any]) -> str:
    parts = [f"{len(entry.get('node-ids', []))} valid replies"]
    for key in ("rejected", "missing"):
        items = entry.get(key) or []
        if items:
            reasons: dict[str, int] = {}
            for item in items:
                reason = str(item.get("reason", "?"))
                reasons[reason] = reasons.get(reason, 0) + 1
            parts.append(
                f"{len(items)} {key} ("
                + ", ".join(f"{r} ×{c}" for r, c in reasons.items())
                + ")"
            )
    return ", ".join(parts)


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
            self.data.pop("reason", None)
        else:
            try:  # claim the file: two runs never share a directory
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                check_unused(self.path.parent)
                raise
            self.data = {
                "config": dict(config),
                "versions": package_versions(),
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "status": "running",
                "ground-truth": ground_truth,
                "rounds": [],
                "summary": None,
            }
        self.flush()
        log(INFO, "%s%s", RESULTS_LINE, self.path)

    @property
    def status(self) -> str:
        """One of :data:`STATUSES`."""
        return str(self.data["status"])

    @property
    def reason(self) -> str:
        """Why the run is not ``completed`` (``""`` when it is or still runs)."""
        return str(self.data.get("reason") or self.data.get("error") or "")

    def add_round(self, entry: dict[str, Any]) -> None:
        """Append one round's entry and flush."""
        self.data["rounds"].append(entry)
        self.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        """Store the run's summary, judge its rounds (:func:`run_health`: completed,
        degraded or failed, with the reason) and flush."""
        self.data["summary"] = summary
        status, reason = run_health(self.data["rounds"])
        self.data["status"] = status
        if reason:
            self.data["reason"] = reason
        else:
            self.data.pop("reason", None)
        self.flush()
        log(INFO, "%s", status_line(status, reason))

    def stop(self, err: BaseException) -> None:
        """Mark the run failed or interrupted (:func:`status_of`) and flush."""
        self.data["status"] = status_of(err)
        text = str(err).strip()
        self.data["error"] = (
            f"{type(err).__name__}: {text}" if text else type(err).__name__
        )
        self.data.pop("reason", None)
        self.flush()
        log(INFO, "%s", status_line(self.status, self.data["error"]))
        with contextlib.suppress(AttributeError, TypeError):
            err.flwr_byz_status = self.status  # type: ignore[attr-defined]

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
