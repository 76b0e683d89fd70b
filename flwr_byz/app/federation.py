"""Who is in the federation: wait for the nodes and learn their partition ids.

Before round 1 the ServerApp sends one ``query`` message to every node; the
ClientApp answers with its ``partition-id`` (and ``num-partitions`` when its node
config has it). This is experiment bookkeeping only — it lets ``results.json``
record which node ids were Byzantine — and never reaches the defence.

The answers are validated like training replies, and nothing in them can stop
the run: a malformed identity leaves that node without a partition (it still
takes part); a node the SuperLink reports gone (its notice comes from node id 1
and names the query it answers) is left out; a reply from a node that was not
asked is ignored.

A node that has not answered (no reply within the query timeout, or an error
reply) is not written off: :class:`IdentityQueries` collects a late answer to any
earlier query and asks such a node again before every round, until it answers
(or has answered :data:`MAX_ERROR_REPLIES` queries with an error). Until then it
trains without a partition id in the record; its answer, when it comes, goes into
the ground truth.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from logging import INFO, WARNING

from flwr.app import Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from flwr_byz.strategy.reply_validation import (
    attribute_replies,
    instruction_destinations,
)

IDENTITY_RECORD = "identity"

#: A node that answers this many identity queries with an error is not asked again.
MAX_ERROR_REPLIES = 3


@dataclass(frozen=True)
class NodeIdentity:
    """What a node said about itself (experiment bookkeeping only).

    Attributes
    ----------
    partition_id : int
        Its partition (simulation), or -1 when it has none (deployment) or has not
        said yet.
    num_partitions : int
        The federation size its node config states; 0 when unknown.
    byzantine : bool | None
        A deployment's explicit ``byzantine`` node-config switch; ``None`` when the
        node has none (then the run config's fraction decides by partition).
    """

    partition_id: int = -1
    num_partitions: int = 0
    byzantine: bool | None = None


class IdentityQueries:
    """The identity queries of one run: who has answered, and what is still open.

    Every query the run sends stays open until its reply is pulled, so an answer
    that arrives after its query's timeout is still taken (at the next
    :meth:`ask`). A node counts as answered once it sent an identity (a malformed
    one included) or a reply without one; an error reply or no reply leaves it
    unanswered, to be asked again.
    """

    def __init__(self) -> None:
        self.answered: set[int] = set()
        self._open: dict[str, int] = {}  # query message id -> its node id
        self._errors: dict[int, int] = {}

    def unanswered(self, node_ids: Iterable[int]) -> list[int]:
        """The nodes of ``node_ids`` that are still to be asked (in order)."""
        return [
            nid
            for nid in node_ids
            if nid not in self.answered and self._errors.get(nid, 0) < MAX_ERROR_REPLIES
        ]

    def ask(
        self, grid: Grid, node_ids: Iterable[int], timeout: float
    ) -> tuple[dict[int, NodeIdentity], set[int]]:
        """Ask the unanswered nodes of ``node_ids`` who they are.

        First collects the answers that arrived late to earlier queries (one
        pull, no wait), then asks the nodes still unanswered and waits for them
        at most ``timeout`` seconds (``send_and_receive``).

        Returns
        -------
        tuple[dict[int, NodeIdentity], set[int]]
            Node id -> identity of every node that answered during this call (the
            nodes asked and any earlier one answering late), and the nodes asked
            that the SuperLink reported gone.
        """
        learned: dict[int, NodeIdentity] = {}
        gone: set[int] = set()
        if self._open:
            self._take(list(grid.pull_messages(list(self._open))), (), learned, gone)
        asked = [n for n in self.unanswered(dict.fromkeys(node_ids)) if n not in gone]
        if asked:
            messages = [
                Message(RecordDict(), dst_node_id=nid, message_type=MessageType.QUERY)
                for nid in asked
            ]
            replies = list(grid.send_and_receive(messages, timeout=timeout))
            # The grid set each query's id when it pushed it; unanswered ones stay
            # open for a late answer.
            self._open.update(instruction_destinations(messages))
            self._take(replies, asked, learned, gone)
        return learned, gone & set(asked)

    def _take(
        self,
        replies: list[Message],
        asked: Iterable[int],
        learned: dict[int, NodeIdentity],
        gone: set[int],
    ) -> None:
        """Record ``replies``: to open queries, or from the nodes just ``asked``."""
        asked = set(asked)
        destinations = dict(self._open)
        own, absent = attribute_replies(
            replies, destinations, sorted(asked | set(destinations.values()))
        )
        for nid, reason in absent.items():
            gone.add(nid)
            log(
                WARNING,
                "Node %d is gone (%s): it is not counted in the federation",
                nid,
                reason.name,
            )
        for reply in replies:  # every reply closes its query
            try:
                self._open.pop(str(reply.metadata.reply_to_message_id), None)
            except Exception:  # pylint: disable=broad-except
                continue
        for reply in own:
            try:
                nid = int(reply.metadata.src_node_id)
                to = destinations.get(str(reply.metadata.reply_to_message_id))
                if (to is not None and to != nid) or (to is None and nid not in asked):
                    log(WARNING, "Ignored an identity reply from node %d", nid)
                    continue
                if nid in self.answered:
                    continue  # it answered another of its queries already
                if reply.has_error():
                    self._errors[nid] = self._errors.get(nid, 0) + 1
                    log(
                        WARNING,
                        "Node %d answered the identity query with an error (%s)%s",
                        nid,
                        reply.error.reason,
                        "; it is asked again before the next round"
                        if self._errors[nid] < MAX_ERROR_REPLIES
                        else "; it is not asked again",
                    )
                    continue
                if IDENTITY_RECORD not in reply.content:
                    # A node that cannot say who it is still takes part in training.
                    identity = NodeIdentity()
                else:
                    identity = parse_identity(nid, reply.content[IDENTITY_RECORD])
                learned[nid] = identity
                self.answered.add(nid)
            except Exception:  # pylint: disable=broad-except
                log(WARNING, "Ignored an unreadable identity reply", exc_info=True)
        # A node that answered needs none of its other queries' replies.
        self._open = {
            mid: nid for mid, nid in self._open.items() if nid not in self.answered
        }


def discover_nodes(
    grid: Grid,
    min_nodes: int,
    timeout: float = 120.0,
    settle: float = 3.0,
    query_timeout: float = 60.0,
    queries: IdentityQueries | None = None,
) -> dict[int, NodeIdentity]:
    """Node id -> what the node said about itself, for every connected node.

    Waits for at least ``min_nodes`` nodes and, when the nodes report
    ``num-partitions`` (simulation), for that many; otherwise until the set of
    connected nodes has not changed for ``settle`` seconds. Each node is asked
    once and waited for at most ``query_timeout`` seconds; the whole wait lasts at
    most ``timeout`` seconds (plus one query). A node that has not answered is in
    the result without a partition (``NodeIdentity()``); ``queries`` keeps its
    query open, to learn its answer later (:func:`identify_nodes`).
    """
    queries = IdentityQueries() if queries is None else queries
    deadline = time.monotonic() + timeout
    identities: dict[int, NodeIdentity] = {}
    gone: set[int] = set()
    expected = min_nodes
    last_change = time.monotonic()
    while True:
        node_ids = sorted(grid.get_node_ids())
        new = [nid for nid in node_ids if nid not in identities and nid not in gone]
        if new:
            last_change = time.monotonic()
            learned, absent = queries.ask(grid, new, query_timeout)
            gone |= absent
            for nid in new:
                if nid not in absent:
                    identities[nid] = learned.get(nid, NodeIdentity())
            # Late answers of nodes asked in an earlier pass.
            identities.update({n: i for n, i in learned.items() if n in identities})
            _warn_unanswered(
                queries.unanswered(n for n in new if n not in absent), query_timeout
            )
            expected = expected_nodes(min_nodes, identities.values())
        # A node that is gone counts as answered: waiting does not bring it back.
        complete = (
            len(identities) >= min_nodes and len(identities) + len(gone) >= expected
        )
        settled = time.monotonic() - last_change >= settle
        if complete and (expected > min_nodes or settled):
            break
        if time.monotonic() > deadline:
            if len(identities) >= min_nodes:
                log(WARNING, "Only %d of %d nodes answered", len(identities), expected)
                break
            raise RuntimeError(
                f"only {len(identities)} node(s) connected within {timeout:.0f} s; "
                f"the run needs at least {min_nodes}"
            )
        time.sleep(0.5)
    log(INFO, "Federation: %d nodes", len(identities))
    return identities


def identify_nodes(
    grid: Grid,
    known: Iterable[int],
    queries: IdentityQueries,
    timeout: float,
    ask: bool = True,
) -> dict[int, NodeIdentity]:
    """What is new about the nodes since the last call: node id -> identity.

    With ``ask`` (before each round), the connected nodes that have not answered
    are asked (again), and waited for at most ``timeout`` seconds: the nodes in
    ``known`` that missed an earlier query, and those not in ``known`` (a
    SuperNode that restarts comes back under a new node id; asking it keeps its
    partition, and whether it is Byzantine, in the record). Late answers to
    earlier queries are collected too; without ``ask`` only those.

    The result holds every node that answered, and every connected node not in
    ``known`` (as ``NodeIdentity()`` when it has not answered yet).
    """
    known = set(known)
    connected = sorted(grid.get_node_ids()) if ask else []
    learned, gone = queries.ask(grid, connected, timeout if ask else 0.0)
    new = [nid for nid in connected if nid not in known and nid not in gone]
    found = {nid: learned.get(nid, NodeIdentity()) for nid in new}
    found.update(learned)
    for nid, node in found.items():
        if nid in known:
            log(INFO, "Node %d answered late (partition %s)", nid, node.partition_id)
        else:
            log(INFO, "Node %d joined (partition %s)", nid, node.partition_id)
    _warn_unanswered(queries.unanswered(new), timeout)
    return found


def _warn_unanswered(node_ids: list[int], timeout: float) -> None:
    for nid in node_ids:
        log(
            WARNING,
            "Node %d did not answer the identity query within %g s; it takes "
            "part without a partition id in the record until it answers (it is "
            "asked again before each round)",
            nid,
            timeout,
        )


def _count(value: object, low: int) -> int | None:
    """``value`` as an integer >= ``low`` (an integral float counts), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if value >= low else None


def parse_identity(node_id: int, record: Mapping[str, object]) -> NodeIdentity:
    """A node's identity reply, validated like a training reply: a malformed one
    leaves that node without a partition (and is logged), it never stops the run."""
    partition = _count(record.get("partition-id", -1), -1)
    claimed = _count(record.get("num-partitions", 0), 0)
    flag = record.get("byzantine")
    if (
        partition is None
        or claimed is None
        or not isinstance(flag, (bool, int, type(None)))
    ):
        log(
            WARNING,
            "Node %d sent a malformed identity (%s); it trains without a partition "
            "id in the record",
            node_id,
            dict(record),
        )
        return NodeIdentity()
    return NodeIdentity(
        partition_id=partition,
        num_partitions=claimed,
        byzantine=None if flag is None else bool(flag),
    )


def expected_nodes(min_nodes: int, identities: Iterable[NodeIdentity]) -> int:
    """How many nodes to wait for: ``min_nodes``, or the *median* federation size
    the nodes state (one node claiming 10**6 partitions cannot stall round 1)."""
    claims = sorted(i.num_partitions for i in identities if i.num_partitions > 0)
    if not claims:
        return min_nodes
    return max(min_nodes, claims[(len(claims) - 1) // 2])
