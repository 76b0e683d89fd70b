"""Who is in a run: node id → partition, and which nodes are Byzantine.

A node's explicit ``byzantine`` switch (deployments) is the truth; otherwise the
run config's ``byzantine-fraction`` / ``byzantine-partitions`` pick partitions,
exactly as the malicious ClientApps pick themselves. Nodes that answer late, or
that join during the run (a restarted SuperNode gets a new node id), are added
as they are identified.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.serverapp import Grid

from flwr_byz.app.config import check_against_nodes
from flwr_byz.app.federation import (
    IdentityQueries,
    NodeIdentity,
    discover_nodes,
    identify_nodes,
)
from flwr_byz.app.liveness import node_floor
from flwr_byz.attacks import byzantine_partitions


@dataclass
class Roster:
    """The run's federation as identified so far.

    Attributes
    ----------
    nodes : dict[int, NodeIdentity]
        node id → what the node said about itself.
    byzantine_partitions : set[int]
        The partitions the run config makes Byzantine.
    byzantine_nodes : list[int]
        The Byzantine node ids, sorted at discovery, late joiners appended.
    query_timeout : float
        Seconds an identity query waits for its answer.
    """

    nodes: dict[int, NodeIdentity]
    byzantine_partitions: set[int]
    query_timeout: float
    queries: IdentityQueries = field(default_factory=IdentityQueries)
    byzantine_nodes: list[int] = field(default_factory=list)

    @classmethod
    def discover(
        cls, grid: Grid, cfg: Mapping[str, Any], *, resuming: bool = False
    ) -> Roster:
        """Wait for the federation (``min-available-nodes``, at least 2, within
        ``node-wait-timeout``), ask every node who it is, check the run config
        against the federation's size.

        ``resuming``: a checkpoint's nodes are matched by partition, so a node that
        has not answered yet is asked once more.
        """
        node_wait_timeout = float(cfg["node-wait-timeout"])
        # The first message a node gets also installs the app and starts a
        # ClientApp process: slower than a round, bounded like the node wait.
        query_timeout = min(60.0, node_wait_timeout)
        queries = IdentityQueries()  # a node that has not answered is asked again
        nodes = discover_nodes(
            grid,
            min_nodes=max(2, int(cfg["min-available-nodes"])),
            timeout=node_wait_timeout,
            query_timeout=query_timeout,
            queries=queries,
        )
        if resuming and queries.unanswered(nodes):
            nodes.update(identify_nodes(grid, nodes, queries, query_timeout))
        check_against_nodes(cfg, len(nodes))
        node_floor(cfg, len(nodes))  # an explicit min-available-nodes must fit
        roster = cls(
            nodes,
            set(byzantine_partitions(cfg, len(nodes))),
            query_timeout,
            queries,
        )
        roster.byzantine_nodes = sorted(
            nid for nid, node in nodes.items() if roster.is_byzantine(node)
        )
        return roster

    def is_byzantine(self, node: NodeIdentity) -> bool:
        """The node's own switch, else whether its partition is a Byzantine one."""
        return bool(
            node.byzantine
            or (
                node.byzantine is None
                and node.partition_id in self.byzantine_partitions
            )
        )

    @property
    def identities(self) -> dict[int, int]:
        """node id → partition id (-1: none) of every node identified."""
        return {nid: node.partition_id for nid, node in self.nodes.items()}

    def ground_truth(self) -> dict[str, Any]:
        """The ``results.json`` ground truth: Byzantine partitions and nodes, and
        the node → partition map."""
        identities = self.identities
        return {
            "byzantine-partition-ids": sorted(
                {identities[n] for n in self.byzantine_nodes}
            ),
            "byzantine-node-ids": self.byzantine_nodes,
            "node-partitions": {str(n): p for n, p in sorted(identities.items())},
        }

    def identify_joined(
        self, grid: Grid, ask: bool = True
    ) -> list[tuple[int, int, bool]]:
        """Ask the nodes that have not said who they are (and new node ids) again;
        return ``(node id, partition id, byzantine)`` of each node identified now."""
        found = []
        for nid, node in identify_nodes(
            grid, self.nodes, self.queries, self.query_timeout, ask=ask
        ).items():
            late = nid in self.nodes
            self.nodes[nid] = node
            byzantine = self.is_byzantine(node)
            if late and byzantine and nid not in self.byzantine_nodes:
                self.byzantine_nodes.append(nid)
            found.append((nid, node.partition_id, byzantine))
        return found
