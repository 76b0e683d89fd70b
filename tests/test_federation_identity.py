"""Start-up identity replies are validated like training replies (fast)."""

from __future__ import annotations

import pytest

from flwr_byz.app.federation import NodeIdentity, expected_nodes, parse_identity


@pytest.mark.parametrize(
    "record",
    [
        {"partition-id": "three"},
        {"partition-id": 1.5},
        {"partition-id": float("nan")},
        {"partition-id": -7},
        {"partition-id": 2, "num-partitions": -1},
        {"partition-id": 2, "num-partitions": "many"},
        {"partition-id": 2, "byzantine": "yes"},
    ],
)
def test_a_malformed_identity_leaves_the_node_without_a_partition(record) -> None:
    assert parse_identity(7, record) == NodeIdentity()


def test_a_well_formed_identity_is_kept() -> None:
    record = {"partition-id": 3, "num-partitions": 10.0, "byzantine": True}
    assert parse_identity(7, record) == NodeIdentity(3, 10, True)


def test_one_node_claiming_a_huge_federation_does_not_set_the_wait() -> None:
    honest = [NodeIdentity(i, 10) for i in range(9)]
    liar = NodeIdentity(9, 10**6)
    assert expected_nodes(2, [*honest, liar]) == 10
    assert expected_nodes(2, [liar, NodeIdentity(0, 10)]) == 10
    assert expected_nodes(4, [NodeIdentity(), NodeIdentity()]) == 4
