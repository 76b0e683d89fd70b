"""A reply counts only for the round whose instruction it answers."""

from __future__ import annotations

import uuid

import numpy as np
import strategy_helpers as sh

from flwr_byz.strategy import RejectReason


def _pushed(msgs):
    """Give the instructions message ids, as a Grid does when it pushes them."""
    for msg in msgs:
        msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return msgs


def test_a_reply_to_an_earlier_rounds_instruction_is_rejected_not_aggregated():
    theta = sh.model_arrays(4)
    strategy = sh.LocalMean(num_malicious_nodes=0)
    with sh.server_identity():
        old = _pushed(sh.instructions(strategy, 1, theta, [1, 2, 3]))
        strategy.aggregate_train(
            1, [sh.reply(m, sh.shifted(theta, 1.0), {"n": 1}) for m in old]
        )
        new = _pushed(sh.instructions(strategy, 2, theta, [1, 2, 3]))
        replies = [sh.reply(m, sh.shifted(theta, 2.0), {"n": 1}) for m in new]
        # Node 1's answer to round 1, delivered again in round 2, far off.
        replies.append(sh.reply(old[0], sh.shifted(theta, 1e3), {"n": 1}))
        arrays, metrics = strategy.aggregate_train(2, replies)
    stale = old[0].metadata.dst_node_id
    assert list(metrics["rejected-node-ids"]) == [stale]
    assert list(metrics["rejected-reasons"]) == [int(RejectReason.STALE_REPLY)]
    # The node's own reply of this round is neither lost nor a duplicate.
    assert sorted(metrics["node-ids"]) == [1, 2, 3]
    np.testing.assert_allclose(sh.record_flat(arrays), sh.flat(theta) + 2.0, atol=1e-5)


def test_a_reply_answering_another_nodes_instruction_is_stale():
    theta = sh.model_arrays(5)
    strategy = sh.LocalMean(num_malicious_nodes=0)
    with sh.server_identity():
        msgs = _pushed(sh.instructions(strategy, 1, theta, [1, 2, 3]))
        forged = sh.reply(msgs[1], sh.shifted(theta, 50.0), {"n": 1})
        forged.metadata.__dict__["_src_node_id"] = msgs[0].metadata.dst_node_id
        replies = [forged] + [
            sh.reply(m, sh.shifted(theta, 1.0), {"n": 1}) for m in msgs[1:]
        ]
        arrays, metrics = strategy.aggregate_train(1, replies)
    assert list(metrics["rejected-reasons"]) == [int(RejectReason.STALE_REPLY)]
    assert sorted(metrics["node-ids"]) == sorted(
        m.metadata.dst_node_id for m in msgs[1:]
    )
    np.testing.assert_allclose(sh.record_flat(arrays), sh.flat(theta) + 1.0, atol=1e-5)
