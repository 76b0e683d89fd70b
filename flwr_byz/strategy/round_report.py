"""What a robust strategy decided in one training round."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class RoundStatus(IntEnum):
    """Outcome of a round (integer code ``"status"`` in the round's MetricRecord).

    ====  ==================  ===================================================
    code  name                meaning
    ====  ==================  ===================================================
    0     OK                  the model was updated
    1     BOUND_FAILED        too few valid replies for the rule's bound
                              (``num-valid < min-nodes``): model unchanged
    2     AGGREGATION_FAILED  the rule raised on this round's updates: model
                              unchanged (see the log)
    3     NON_FINITE_RESULT   the new model would hold NaN/inf: model unchanged
    4     NO_UPDATE           the rule itself declined to move the model (FLTrust:
                              zero total trust or a zero server update): model
                              unchanged, the round's decisions still reported
    ====  ==================  ===================================================
    """

    OK = 0
    BOUND_FAILED = 1
    AGGREGATION_FAILED = 2
    NON_FINITE_RESULT = 3
    NO_UPDATE = 4


class MissingReason(IntEnum):
    """Why a sampled node has no reply in a round (integer code in MetricRecords).

    A missing reply is reported under the node it was sent to, never as a reply:
    the SuperLink's own notices (sender node id 1) are attributed to that node
    through the instruction they answer.

    ====  =================  ====================================================
    code  name               the node ...
    ====  =================  ====================================================
    1     TIMED_OUT          sent nothing before the round's timeout
    2     NODE_UNAVAILABLE   stopped sending heartbeats: the SuperLink reported
                             it offline (crashed, killed, disconnected)
    3     REPLY_UNAVAILABLE  the SuperLink or the grid lost the instruction or
                             the reply (expired, objects not uploaded)
    ====  =================  ====================================================
    """

    TIMED_OUT = 1
    NODE_UNAVAILABLE = 2
    REPLY_UNAVAILABLE = 3


@dataclass
class RoundReport:
    """Diagnostics of one training round, keyed by Flower node id.

    Attributes
    ----------
    server_round : int
        The round.
    status : RoundStatus
        Whether the model was updated, and if not why.
    message : str
        Human-readable explanation of ``status``.
    f : int
        Byzantine budget used this round.
    min_nodes : int
        Smallest number of valid replies the rule accepts for ``f``.
    num_sent : int
        Number of nodes the round's instructions went to.
    node_ids : list[int]
        Valid replies' node ids, in the row order the rule saw.
    partition_ids : list[int]
        Parallel to ``node_ids``: the partition each node says it holds
        (``byzantine_mod`` reports it in simulation), ``-1`` when unknown.
    selected : list[int]
        Node ids whose updates entered the aggregate.
    removed : list[int]
        Node ids the rule discarded, in the order it discarded them (what the
        rule did; not "the attackers": FABA removes f nodes every round).
    suspected : list[int]
        Node ids whose update is a robust outlier this round, by one definition
        for every rule (:mod:`flwr_byz.strategy.suspicion`), ascending. FLTrust
        and Zeno replace it with their own verdict (``extra``).
    scores : list[float]
        Per-node score (parallel to ``node_ids``) where the rule scores nodes.
    weights : list[float]
        Per-node weight (parallel to ``node_ids``) where the aggregate is a
        weighted mean of updates.
    rejected : list[tuple[int, str]]
        ``(node id, RejectReason name)`` of every reply excluded by validation.
    rejected_codes : list[int]
        The integer codes of ``rejected`` (parallel).
    missing : list[int]
        Node ids that were sent instructions but did not reply.
    missing_reasons : list[str]
        Parallel to ``missing``: the :class:`MissingReason` name of each.
    missing_codes : list[int]
        The integer codes of ``missing_reasons`` (parallel).
    extra : dict
        Rule-specific values (``AggregationResult.metrics``), e.g. GAA credits.
    seconds : float
        Wall time of the server-side aggregation.
    """

    server_round: int
    status: RoundStatus = RoundStatus.OK
    message: str = ""
    f: int = 0
    min_nodes: int = 0
    num_sent: int = 0
    node_ids: list[int] = field(default_factory=list)
    partition_ids: list[int] = field(default_factory=list)
    selected: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    suspected: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    rejected_codes: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    missing_reasons: list[str] = field(default_factory=list)
    missing_codes: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def num_valid(self) -> int:
        """Number of replies that passed validation."""
        return len(self.node_ids)

    def to_metrics(self) -> dict[str, int | float | list[int] | list[float]]:
        """The report as MetricRecord-compatible values (lists keyed by node id)."""
        metrics: dict[str, int | float | list[int] | list[float]] = {
            "status": int(self.status),
            "bound-failed": int(self.status == RoundStatus.BOUND_FAILED),
            "f": int(self.f),
            "min-nodes": int(self.min_nodes),
            "num-sent": int(self.num_sent),
            "num-valid": self.num_valid,
            "num-rejected": len(self.rejected),
            "num-missing": len(self.missing),
            "node-ids": [int(i) for i in self.node_ids],
            "partition-ids": [int(i) for i in self.partition_ids],
            "selected-node-ids": [int(i) for i in self.selected],
            "removed-node-ids": [int(i) for i in self.removed],
            "suspected-node-ids": [int(i) for i in self.suspected],
            "scores": [float(s) for s in self.scores],
            "weights": [float(w) for w in self.weights],
            "rejected-node-ids": [int(i) for i, _ in self.rejected],
            "rejected-reasons": [int(c) for c in self.rejected_codes],
            "missing-node-ids": [int(i) for i in self.missing],
            "missing-reasons": [int(c) for c in self.missing_codes],
        }
        metrics.update(self.extra)
        return metrics
