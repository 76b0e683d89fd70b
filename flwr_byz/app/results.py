"""``results.json``: one run's configuration, ground truth and per-round record.

The file is rewritten atomically after every round, so an interrupted run keeps
every round it finished and a reader never sees half a file.
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


def package_versions() -> dict[str, str]:
    """Versions of what produced the numbers (for the record, not for checks)."""
    versions = {"python": platform.python_version()}
    for dist in ("flwr-byz", "flwr", "torch", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


class ResultsFile:
    """The ``results.json`` of one run, flushed after every round.

    Parameters
    ----------
    output_dir : str | Path
        Directory to write ``results.json`` into (created if missing).
    config : dict
        The full, validated run config.
    ground_truth : dict
        Which partition ids and node ids were Byzantine, and the node → partition
        map; the defence never reads this.
    """

    def __init__(
        self, output_dir: str | Path, config: dict[str, Any], ground_truth: dict
    ) -> None:
        self.path = Path(output_dir).resolve() / "results.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {
            "config": dict(config),
            "versions": package_versions(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "ground-truth": ground_truth,
            "rounds": [],
            "summary": None,
        }
        self.flush()

    def add_round(self, entry: dict[str, Any]) -> None:
        """Append one round's entry and flush."""
        self.data["rounds"].append(entry)
        self.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        """Store the run's summary and flush."""
        self.data["summary"] = summary
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
