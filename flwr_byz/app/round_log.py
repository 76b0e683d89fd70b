"""Turn each round's strategy diagnostics into ``results.json`` entries.

The strategy reports by node id (that is all a defence knows); the experiment also
knows each node's partition id and whether it was Byzantine, and records both, so
that runs can be compared across simulations (node ids are drawn afresh each run).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, MetricRecord

from flwr_byz.app.detection import flagged_by_removals, precision_recall
from flwr_byz.app.results import ResultsFile
from flwr_byz.strategy.round_report import MissingReason


def _kebab(name: str) -> str:
    return name.lower().replace("_", "-")


def _reason_name(code: int) -> str:
    from flwr_byz.strategy import RejectReason

    try:
        return _kebab(RejectReason(code).name)
    except ValueError:
        return f"code-{code}"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class RoundLog:
    """Collects one entry per round and flushes it to ``results.json``.

    Parameters
    ----------
    results : ResultsFile
        Where entries go.
    identities : dict[int, int]
        Node id → partition id.
    byzantine_node_ids : list[int]
        Ground truth, for the summary only.
    """

    def __init__(
        self,
        results: ResultsFile,
        identities: dict[int, int],
        byzantine_node_ids: list[int],
    ) -> None:
        self.results = results
        self.identities = identities
        self.byzantine = set(byzantine_node_ids)
        self._pending: dict[str, Any] = {}
        self._last_eval = time.perf_counter()
        self._removed: list[list[int]] = []
        self._seen: list[list[int]] = []
        self._credits: dict[int, float] = {}
        self.episode = 1
        self._model: str | None = None
        self._model_changed: bool | None = None

    def add_node(self, node_id: int, partition_id: int, byzantine: bool) -> None:
        """Record a node that joined during the run, in the ground truth too."""
        self.identities[int(node_id)] = partition_id
        truth = self.results.data["ground-truth"]
        truth["node-partitions"][str(node_id)] = partition_id
        if byzantine:
            self.byzantine.add(int(node_id))
            truth["byzantine-node-ids"] = sorted(self.byzantine)
            truth["byzantine-partition-ids"] = sorted(
                {self.identities.get(n, -1) for n in self.byzantine}
            )
        self.results.flush()

    def state(self) -> dict[str, Any]:
        """What the summary needs of the rounds so far (for a checkpoint)."""
        return {
            "removed": [list(r) for r in self._removed],
            "seen": [list(r) for r in self._seen],
            "credits": dict(self._credits),
            "byzantine": sorted(self.byzantine),
        }

    def restore(self, state: dict[str, Any], nodes: dict[int, int]) -> None:
        """Take :meth:`state` back, node ids mapped old → new through ``nodes``."""

        def mapped(ids: list[int]) -> list[int]:
            return [nodes.get(int(n), int(n)) for n in ids]

        self._removed = [mapped(r) for r in state["removed"]]
        self._seen = [mapped(r) for r in state["seen"]]
        self._credits = {
            nodes.get(int(n), int(n)): float(c) for n, c in state["credits"].items()
        }
        # Nodes that played Byzantine before (a restarted one's old id included).
        self.byzantine |= set(mapped(state.get("byzantine", [])))

    def _partitions(self, node_ids: list[int]) -> list[int]:
        return [self.identities.get(int(n), -1) for n in node_ids]

    def on_train(
        self,
        server_round: int,
        metrics: MetricRecord | None,
        seconds: float,
        missing: Mapping[int, MissingReason] | None = None,
        aggregate_seconds: float | None = None,
    ) -> None:
        """Record what the strategy decided this round, and who never answered.

        ``seconds`` runs from ``configure_train`` to the end of ``aggregate_train``
        (``train-time-s``); ``aggregate_seconds`` is the strategy's own part
        (``aggregate-time-s``); the clients report their local training time
        (``client-train-time-s``, the mean over the replies the strategy averaged).
        """
        m = dict(metrics or {})
        node_ids = [int(n) for n in m.get("node-ids", [])]
        removed = [int(n) for n in m.get("removed-node-ids", [])]
        selected = [int(n) for n in m.get("selected-node-ids", [])]
        rejected = [int(n) for n in m.get("rejected-node-ids", [])]
        reasons = [int(r) for r in m.get("rejected-reasons", [])]
        entry: dict[str, Any] = {
            "round": server_round,
            "episode": self.episode,
            "node-ids": node_ids,
            "partitions": self._partitions(node_ids),
            "f": m.get("f"),
            "rejected": [
                {
                    "node-id": n,
                    "partition-id": self.identities.get(n, -1),
                    "reason": _reason_name(r),
                }
                for n, r in zip(rejected, reasons, strict=False)
            ],
            # Sampled, but no reply of its own (timed out, or the SuperLink
            # reported the node gone): under the node's own id, whatever the
            # strategy.
            "missing": [
                {
                    "node-id": int(n),
                    "partition-id": self.identities.get(int(n), -1),
                    "reason": _kebab(reason.name),
                }
                for n, reason in (missing or {}).items()
            ],
            "removed-node-ids": removed,
            "removed-partitions": self._partitions(removed),
            "selected-node-ids": selected,
            "selected-partitions": self._partitions(selected),
            "scores": [float(s) for s in m.get("scores", [])],
            "weights": [float(w) for w in m.get("weights", [])],
            "train-time-s": round(seconds, 4),
        }
        if aggregate_seconds is not None:
            entry["aggregate-time-s"] = round(aggregate_seconds, 4)
        if "train-time-s" in m:
            entry["client-train-time-s"] = round(float(m["train-time-s"]), 4)
        if "status" in m:
            entry["status"] = m["status"]
        if "suspected-node-ids" in m:  # robust outliers; FLTrust, Zeno: their verdict
            suspected = [int(n) for n in m["suspected-node-ids"]]
            entry["suspected-node-ids"] = suspected
            entry["suspected-partitions"] = self._partitions(suspected)
        if "credits" in m:
            credit_ids = [int(n) for n in m.get("credit-node-ids", [])]
            credits = [float(c) for c in m["credits"]]
            self._credits = dict(zip(credit_ids, credits, strict=False))
            entry["credit-node-ids"] = credit_ids
            entry["credit-partitions"] = self._partitions(credit_ids)
            entry["credits"] = credits
        self._removed.append(removed)
        self._seen.append(node_ids)
        self._pending = entry

    def see_model(self, arrays: ArrayRecord) -> None:
        """The global model after a round (or the initial one): note whether it
        differs from the one seen before, for strategies that report no round
        ``status`` (:meth:`on_evaluate` records it as ``model-updated``)."""
        digest = model_digest(arrays)
        self._model_changed = None if self._model is None else digest != self._model
        self._model = digest

    def on_evaluate(self, server_round: int, metrics: MetricRecord) -> None:
        """Complete the round's entry with the global evaluation and flush it."""
        now = time.perf_counter()
        entry = (
            self._pending if server_round > 0 else {"round": 0, "episode": self.episode}
        )
        changed = self._model_changed
        if server_round > 0 and "status" not in entry and changed is not None:
            # The strategy said nothing of its round (Flower's FedAvg): whether
            # the model moved is what the round did.
            entry["model-updated"] = changed
        entry["accuracy"] = _finite(float(metrics["accuracy"]))
        entry["loss"] = _finite(float(metrics["loss"]))
        if "worst-class-accuracy" in metrics:
            entry["worst-class-accuracy"] = _finite(
                float(metrics["worst-class-accuracy"])
            )
        entry["round-time-s"] = round(now - self._last_eval, 4)
        self._last_eval = now
        self._pending = {}
        self.results.add_round(entry)

    def summary(
        self, strategy: object, detection_k: int, total_time: float
    ) -> dict[str, Any]:
        """Final accuracy and who the defence flagged, scored against the truth."""
        rounds = self.results.data["rounds"]
        inner = strategy
        while not hasattr(inner, "detect") and hasattr(inner, "strategy"):
            inner = inner.strategy
        if hasattr(inner, "detect") and self._credits:
            flagged = [int(n) for n in inner.detect(detection_k)]
            method = (
                f"GAA+ (the {detection_k} lowest credits, leaving out nodes the "
                "policy never set apart from the best)"
            )
        else:
            flagged = flagged_by_removals(self._removed, self._seen)
            method = "removed in more than half of the rounds it took part in"
        precision, recall = precision_recall(flagged, self.byzantine)
        episodes = []
        for e in sorted({r.get("episode", 1) for r in rounds}):
            own = [r for r in rounds if r.get("episode", 1) == e]
            episodes.append(
                {
                    "episode": e,
                    "initial-accuracy": own[0].get("accuracy"),
                    "final-accuracy": own[-1].get("accuracy"),
                }
            )
        return {
            "final-accuracy": rounds[-1].get("accuracy") if rounds else None,
            "final-worst-class-accuracy": (
                rounds[-1].get("worst-class-accuracy") if rounds else None
            ),
            "initial-accuracy": rounds[0].get("accuracy") if rounds else None,
            "episodes": episodes,
            "detection-method": method,
            "detected-node-ids": sorted(flagged),
            "detected-partitions": sorted(self._partitions(flagged)),
            "byzantine-partitions": sorted(self._partitions(sorted(self.byzantine))),
            "detection-precision": precision,
            "detection-recall": recall,
            "detection-correct": set(flagged) == self.byzantine,
            "total-time-s": round(total_time, 2),
        }

    def summary_lines(self, summary: dict[str, Any], path: Path) -> list[str]:
        """A few lines a person reads at the end of the run."""
        cfg = self.results.data["config"]
        acc = summary["final-accuracy"]
        acc0 = summary["initial-accuracy"]
        verdict = "correct" if summary["detection-correct"] else "NOT correct"
        status = self.results.status
        health = (
            [f"  status: {status.upper()}: {self.results.reason}"]
            if status != "completed"
            else []
        )
        return [
            "",
            "=" * 72,
            f"flwr-byz: strategy={cfg['strategy']}  attack={cfg['attack']} "
            f"({cfg['attack-pattern']}, "
            f"byzantine-fraction={cfg['byzantine-fraction']})",
            f"  global test accuracy: {_pct(acc0)} before round 1 -> {_pct(acc)} after "
            f"round {cfg['num-server-rounds']}",
            *(
                f"    episode {e['episode']}: {_pct(e['initial-accuracy'])} -> "
                f"{_pct(e['final-accuracy'])}"
                for e in summary.get("episodes", [])
                if len(summary["episodes"]) > 1
            ),
            f"  Byzantine partitions (truth): {summary['byzantine-partitions']}",
            f"  detected ({summary['detection-method']}): "
            f"{summary['detected-partitions']} -> {verdict} "
            f"(precision {summary['detection-precision']:.2f}, "
            f"recall {summary['detection-recall']:.2f})",
            *health,
            f"  results: {path}",
            "=" * 72,
        ]


def model_digest(arrays: ArrayRecord) -> str:
    """A digest of every array's key, dtype, shape and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    for key, array in arrays.items():
        digest.update(f"{key}|{array.dtype}|{tuple(array.shape)}|".encode())
        digest.update(array.data)
    return digest.hexdigest()


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"
