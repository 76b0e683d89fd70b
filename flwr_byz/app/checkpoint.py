"""``checkpoint.pt``: everything a run needs to go on after a crash, bit for bit.

After every round the ServerApp writes, atomically (temporary file + ``os.replace``),
into its run directory:

* the global model after the round (``arrays``, a torch state dict);
* the strategy's whole state: its ``state_dict()``, in which every wrapper holds
  the state of the strategy it wraps (a server-side attack's record, a robust
  rule's server-momentum buffer, GAA's agent: policy ψ, its optimiser,
  log-credits, the episode window, episode counters, its RNG; see
  :mod:`flwr_byz.strategy.layer_state`);
* the random states the server draws from: Python's ``random`` (Flower samples the
  nodes of each round with it) and torch's (CPU, and CUDA where used);
* where the run is: episode, round, elapsed seconds;
* the run's record so far (``results.json`` as of that round, and what the round
  log accumulates for the summary), and the node → partition map of the run.

``resume = <run dir>`` loads it, refuses it when it cannot continue that run (an
unreadable or truncated file, another run config, another model, another
federation), restores all of it and plays the remaining rounds with the round
numbers an uninterrupted run would have used. Every check happens before round 1
and says what to do.

The file is read with ``torch.load(weights_only=True)``: tensors and plain Python
containers only, never arbitrary pickled objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from flwr_byz.app.config import RunConfigError
from flwr_byz.app.results import CHECKPOINT_FILE, RESULTS_FILE, package_versions
from flwr_byz.strategy.layer_state import (
    StateMismatchError,
    load_tagged_state,
    map_node_id,
    tagged_state,
)

FORMAT = "flwr-byz-checkpoint"
#: The format version written; :func:`load_checkpoint` also reads version 1 (the
#: strategy state as a list of layers, outermost first).
VERSION = 2
READABLE_VERSIONS = (1, 2)

#: Run-config keys that may differ between an interrupted run and its resume: they
#: say where results go, which run to resume, or inject a fault; nothing computed
#: depends on them.
VOLATILE_KEYS = frozenset({"output-dir", "resume", "fault-stop-after-round"})

_REQUIRED = {
    "format": str,
    "version": int,
    "config": dict,
    "episode": int,
    "round": int,
    "arrays": dict,
    "strategy": dict,
    "rng": dict,
    "nodes": dict,
    "results": dict,
    "log": dict,
    "elapsed-s": float,
}


class CheckpointError(RunConfigError):
    """A checkpoint that cannot continue this run; the message says what to do."""


_FRESH = "or start a fresh run (resume = '') in a new output-dir"


# --------------------------------------------------------------------- the file
def checkpoint_file(resume: str | Path) -> Path:
    """The checkpoint named by the ``resume`` key: a run directory or the file."""
    path = Path(resume).expanduser().resolve()
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(
            f"run-config key 'resume' = {str(resume)!r}: no checkpoint at {path} "
            "(give the run directory of an interrupted run, the one that holds "
            f"{CHECKPOINT_FILE} and results.json, {_FRESH})"
        )
    return path


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a reader (or a crash) sees the old
    file or the new one, never half of one.

    The file is the owner's only (0600: it holds the global model and every
    node's state), and is on disk before it replaces the old one: the file is
    synced, then the directory entry of the rename.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover of a crash; created anew with mode 0600
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    with os.fdopen(os.open(tmp, flags, 0o600), "wb") as handle:
        torch.save(dict(payload), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where directories can be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` and check its form.

    Raises
    ------
    CheckpointError
        When the file is unreadable (truncated, corrupt, not a checkpoint) or was
        written by another version of this format.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, forbidden type, I/O
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: "
            f"{_first_line(err)}): it is truncated or corrupt. Resume from an "
            f"intact copy, {_FRESH}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a flwr-byz checkpoint; point 'resume' at the run "
            f"directory of an interrupted flwr-byz run, {_FRESH}"
        )
    version = payload.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this flwr-byz "
            f"reads versions {', '.join(map(str, READABLE_VERSIONS))}. Resume it "
            f"with the flwr-byz that wrote it, {_FRESH}"
        )
    if version == 1 and isinstance(payload.get("strategy"), list):
        try:
            payload["strategy"] = _strategy_from_version_1(payload["strategy"])
        except ValueError as err:
            raise CheckpointError(
                f"checkpoint {path} lacks a valid 'strategy' entry ({err}): it is "
                f"damaged. Resume from an intact copy, {_FRESH}"
            ) from err
    for key, kind in _REQUIRED.items():
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(
                f"checkpoint {path} lacks a valid {key!r} entry: it is damaged. "
                f"Resume from an intact copy, {_FRESH}"
            )
    return payload


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else "no detail"


# ------------------------------------------------------------------ the checks
def check_config(saved: Mapping[str, Any], cfg: Mapping[str, Any], where: Path) -> None:
    """Refuse a run config that differs from the checkpoint's (volatile keys aside)."""
    keys = sorted((set(saved) | set(cfg)) - VOLATILE_KEYS)
    diffs = [
        f"{k!r} = {saved.get(k, '<absent>')!r} there, {cfg.get(k, '<absent>')!r} here"
        for k in keys
        if not _same(saved.get(k), cfg.get(k))
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {where} was written by a run with another run config: "
            + "; ".join(diffs)
            + ". Resume with the interrupted run's config (only "
            + ", ".join(repr(k) for k in sorted(VOLATILE_KEYS))
            + f" may differ), {_FRESH}"
        )


def _same(a: Any, b: Any) -> bool:
    return bool(a == b) and isinstance(a, bool) == isinstance(b, bool)


def check_arrays(
    saved: Mapping[str, torch.Tensor], model: Mapping[str, torch.Tensor], where: Path
) -> None:
    """Refuse saved model arrays whose names, shapes or dtypes are not the model's."""
    if list(saved) != list(model):
        raise CheckpointError(
            f"checkpoint {where} holds a model with arrays {list(saved)[:4]}…, this "
            f"run builds one with {list(model)[:4]}…: another model. Resume with "
            f"the interrupted run's model, data and code, {_FRESH}"
        )
    for key, value in saved.items():
        want = model[key]
        if (
            not isinstance(value, torch.Tensor)
            or value.shape != want.shape
            or value.dtype != want.dtype
        ):
            got = (
                f"{tuple(value.shape)} {value.dtype}"
                if isinstance(value, torch.Tensor)
                else type(value).__name__
            )
            raise CheckpointError(
                f"checkpoint {where}: array {key!r} is {got}, this run's model has "
                f"{tuple(want.shape)} {want.dtype}: another model. Resume with the "
                f"interrupted run's model and data, {_FRESH}"
            )


def node_map(
    saved: Mapping[int, int], nodes: Mapping[int, int], where: Path
) -> dict[int, int]:
    """Old node id → new node id, for the nodes of the checkpoint that are back.

    A node id that is in both federations maps to itself (a deployment whose
    SuperNodes kept their ids). The others are matched by partition id (a
    simulation draws node ids afresh): when several old ids share a partition (a
    SuperNode that restarted during the run got a new id), the one that joined
    last is the node that is back; the earlier ones stay as they are, nodes that
    are gone. Nodes without a partition id (-1) can only keep their ids.

    Raises
    ------
    CheckpointError
        When the federations' partitions differ, or a node cannot be matched.
    """
    saved = {int(k): int(v) for k, v in saved.items()}
    nodes = {int(k): int(v) for k, v in nodes.items()}
    new_partitions = [p for p in nodes.values() if p >= 0]
    old_partitions = {p for n, p in saved.items() if p >= 0}
    unmatched = [n for n, p in nodes.items() if n not in saved and p < 0]
    lost = [n for n, p in saved.items() if n not in nodes and p < 0]
    if (
        len(set(new_partitions)) != len(new_partitions)
        or set(new_partitions) != old_partitions
        or unmatched
        or lost
    ):
        raise CheckpointError(
            f"checkpoint {where} was written by a federation of {len(saved)} "
            f"node(s), partitions {sorted(saved.values())}; this one has "
            f"{len(nodes)}, partitions {sorted(nodes.values())}"
            + (
                f", and nodes without a partition id whose ids differ "
                f"({sorted(unmatched + lost)})"
                if unmatched or lost
                else ""
            )
            + ": its nodes cannot be matched. Resume with the interrupted run's "
            "federation (the same partitions, or the same node ids), "
            f"{_FRESH}"
        )
    mapping = {n: n for n in saved if n in nodes}
    by_partition = {p: n for n, p in nodes.items() if p >= 0}
    latest = {p: n for n, p in saved.items() if n not in nodes and p >= 0}
    taken = set(mapping.values())
    for p, old in latest.items():
        if by_partition[p] not in taken:
            mapping[old] = by_partition[p]
    return mapping


# ----------------------------------------------------------- the random states
def capture_rng() -> dict[str, Any]:
    """The random states the server draws from (Python's, torch's)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [int(version), list(internal), gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the random states saved by :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------ strategy state
def capture_strategy(strategy: Strategy) -> dict[str, Any]:
    """``strategy``'s tagged state (see :mod:`flwr_byz.strategy.layer_state`): its
    class and its ``state_dict()``, which holds the states of the strategies it
    wraps."""
    return tagged_state(strategy)


def restore_strategy(
    strategy: Strategy,
    saved: Mapping[str, Any],
    nodes: Mapping[int, int],
    where: Path,
) -> None:
    """Load :func:`capture_strategy` output, node ids mapped through ``nodes``.

    Raises
    ------
    CheckpointError
        When the saved state is another strategy's, or does not fit this one.
    """
    try:
        load_tagged_state(strategy, saved, nodes)
    except StateMismatchError as err:
        raise CheckpointError(
            f"checkpoint {where} holds the state of another strategy: {err}. "
            f"Resume with the interrupted run's config and code, {_FRESH}"
        ) from err
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {where}: the strategy state does not fit this run's "
            f"strategy ({type(err).__name__}: {_first_line(err)}). Resume with the "
            f"interrupted run's config and code, {_FRESH}"
        ) from err


def _strategy_from_version_1(layers: list[Any]) -> dict[str, Any]:
    """A version-1 strategy entry (one dict per layer, outermost first, with
    ``tampered`` / ``momentum`` / ``agent`` by class) as a tagged state."""
    tagged: dict[str, Any] | None = None
    for layer in reversed(layers):
        if not isinstance(layer, dict):
            raise ValueError("a layer entry is not a dict")
        state: dict[str, Any] = {}
        if "tampered" in layer:
            state["tampered"] = layer["tampered"]
        if "momentum" in layer:
            state["momentum"] = layer["momentum"]
        if "agent" in layer:
            state["agent"] = layer["agent"]
        if tagged is not None:
            state["strategy"] = tagged
        tagged = {"class": layer.get("class"), "state": state}
    if tagged is None:
        raise ValueError("no layer")
    return tagged


def _mapped(node_id: Any, nodes: Mapping[int, int]) -> Any:
    return map_node_id(node_id, nodes)


def remap_record(value: Any, nodes: Mapping[int, int]) -> Any:
    """A results.json fragment with the node ids of ``*node-ids`` / ``node-id`` keys
    mapped (and the keys of ``node-partitions`` left to the caller)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k.endswith("node-ids") and isinstance(v, list):
                out[k] = [_mapped(n, nodes) for n in v]
            elif k == "node-id":
                out[k] = _mapped(v, nodes)
            else:
                out[k] = remap_record(v, nodes)
        return out
    if isinstance(value, list):
        return [remap_record(v, nodes) for v in value]
    return value


# ------------------------------------------------------------------ save, resume
def checkpoint_payload(
    *,
    config: Mapping[str, Any],
    episode: int,
    server_round: int,
    arrays: ArrayRecord,
    strategy: Strategy,
    nodes: Mapping[int, int],
    results: Mapping[str, Any],
    log: Mapping[str, Any],
    elapsed: float,
) -> dict[str, Any]:
    """Everything :class:`Resume` needs, taken at the end of ``server_round``."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": dict(config),
        "episode": int(episode),
        "round": int(server_round),
        "arrays": dict(arrays.to_torch_state_dict()),
        "strategy": capture_strategy(strategy),
        "rng": capture_rng(),
        "nodes": {int(n): int(p) for n, p in nodes.items()},
        "results": dict(results),
        "log": dict(log),
        "elapsed-s": float(elapsed),
    }


class RunCheckpoint:
    """Writes a run's ``checkpoint.pt`` at the end of each of its rounds.

    Parameters
    ----------
    path : Path
        The checkpoint file (in the run directory).
    config : Mapping
        The run config.
    strategy : Strategy
        The strategy whose :func:`capture_strategy` state is saved.
    nodes : Mapping[int, int]
        node id → partition id of the run (kept up to date by the caller).
    elapsed_before : float
        Seconds the interrupted run(s) had spent (0 for a fresh run).
    """

    def __init__(
        self,
        path: Path,
        config: Mapping[str, Any],
        strategy: Strategy,
        nodes: Mapping[int, int],
        elapsed_before: float = 0.0,
    ) -> None:
        self.path = Path(path)
        self.config = config
        self.strategy = strategy
        self.nodes = nodes
        self.elapsed_before = float(elapsed_before)
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of the whole run so far, interrupted runs included."""
        return self.elapsed_before + time.perf_counter() - self.started

    def save(
        self,
        episode: int,
        server_round: int,
        arrays: ArrayRecord,
        results: Mapping[str, Any],
        log: Mapping[str, Any],
    ) -> None:
        """Write the checkpoint of the end of ``server_round`` of ``episode``, with
        the run's record (``results.json``) and round log as of that round."""
        save_checkpoint(
            self.path,
            checkpoint_payload(
                config=self.config,
                episode=episode,
                server_round=server_round,
                arrays=arrays,
                strategy=self.strategy,
                nodes=self.nodes,
                results=results,
                log=log,
                elapsed=self.elapsed(),
            ),
        )


@dataclass
class Resume:
    """A loaded, checked checkpoint of the run that the ``resume`` key names."""

    path: Path
    payload: dict[str, Any]
    previous_status: str

    @classmethod
    def open(cls, cfg: Mapping[str, Any]) -> Resume:
        """Load the checkpoint ``cfg['resume']`` names and check it against ``cfg``.

        Raises
        ------
        CheckpointError
            No checkpoint there, an unreadable or damaged one, another run config,
            or a run that already completed.
        """
        path = checkpoint_file(str(cfg["resume"]))
        payload = load_checkpoint(path)
        check_config(payload["config"], cfg, path)
        status = _status_on_disk(path.parent / RESULTS_FILE)
        if status == "completed":
            raise CheckpointError(
                f"run-config key 'resume': the run in {path.parent} completed; there "
                f"is nothing to resume. Start a fresh run (resume = '') in a new "
                "output-dir"
            )
        return cls(path, payload, status)

    @property
    def run_dir(self) -> Path:
        """Where the interrupted run wrote, and where the resumed one goes on."""
        return self.path.parent

    @property
    def episode(self) -> int:
        """The episode of the last round played."""
        return int(self.payload["episode"])

    @property
    def round(self) -> int:
        """The last round played (within its episode)."""
        return int(self.payload["round"])

    @property
    def arrays(self) -> dict[str, torch.Tensor]:
        """The global model after that round."""
        return self.payload["arrays"]

    @property
    def elapsed(self) -> float:
        """Seconds the interrupted run(s) had spent up to that round."""
        return float(self.payload["elapsed-s"])

    def record(self, nodes: Mapping[int, int]) -> dict[str, Any]:
        """The run's ``results.json`` record as of the checkpoint, node ids mapped,
        with this resume noted in ``resumes``."""
        data = dict(self.payload["results"])
        data["rounds"] = remap_record(list(data.get("rounds", [])), nodes)
        data["summary"] = None
        data["resumes"] = [
            *data.get("resumes", []),
            {
                "after-episode": self.episode,
                "after-round": self.round,
                "previous-status": self.previous_status,
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "versions": package_versions(),
            },
        ]
        return data


def _status_on_disk(path: Path) -> str:
    try:
        return str(json.loads(path.read_text()).get("status", "unknown"))
    except (OSError, ValueError, AttributeError):
        return "unknown"
