"""RobustStrategy's validation + update core on real Flower messages (fast)."""

from __future__ import annotations

import dataclasses
import io
import logging

import numpy as np
import pytest
import strategy_helpers as sh
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.strategy import RejectReason, RoundStatus
from flwr_byz.strategy.model_layout import npy_view, parse_npy_header
from flwr_byz.strategy.reply_validation import MAX_NUM_EXAMPLES

R = RejectReason


@pytest.fixture(autouse=True)
def _identity():
    with sh.server_identity():
        yield


def _npy(value: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, value, allow_pickle=False)
    return buf.getvalue()


def _raw(dtype: str, shape: tuple, data: bytes, stype: str = "numpy.ndarray") -> Array:
    return Array(dtype=dtype, shape=shape, stype=stype, data=data)


def _good(theta, step):
    return sh.shifted(theta, step)


def test_npy_view_is_zero_copy_and_exact():
    value = np.arange(12, dtype=np.float32).reshape(3, 4)
    array = Array(value)
    view = npy_view(array)
    np.testing.assert_array_equal(view, value)
    # The view reads the Array's own bytes: no deserialising copy.
    assert np.shares_memory(view, np.frombuffer(array.data, dtype=np.uint8))
    assert parse_npy_header(array.data).shape == (3, 4)


def test_honest_round_moves_model_by_mean_update_and_reports():
    theta = sh.model_arrays(0)
    strategy = sh.LocalMean(num_malicious_nodes=1)
    msgs = sh.instructions(strategy, 1, theta, [11, 12, 13, 14])
    steps = [0.5, -1.0, 2.0, 0.25]
    replies = [
        sh.reply(m, _good(theta, s), {"num-examples": 10, "train-loss": float(i)})
        for i, (m, s) in enumerate(zip(msgs, steps, strict=True))
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    expected = sh.flat(theta) + np.mean(steps)
    np.testing.assert_allclose(sh.record_flat(arrays), expected, atol=1e-6)
    # Integer arrays keep the server's value.
    assert int(arrays["count"].numpy()) == 7
    assert metrics["status"] == int(RoundStatus.OK)
    assert sorted(metrics["node-ids"]) == [11, 12, 13, 14]
    assert metrics["num-valid"] == 4 and metrics["num-rejected"] == 0
    assert metrics["f"] == 1 and metrics["min-nodes"] == 3
    assert metrics["train-loss"] == pytest.approx(1.5)
    assert "num-examples" not in metrics
    report = strategy.history[-1]
    assert report.server_round == 1 and report.status == RoundStatus.OK
    # Updates handed to the rule are w_i - theta_t, rows in node-id order.
    updates, node_ids, weights, f, global_flat = strategy.seen
    assert weights is None and f == 1
    np.testing.assert_allclose(global_flat.numpy(), sh.flat(theta), atol=0)
    step_of = {m.metadata.dst_node_id: s for m, s in zip(msgs, steps, strict=True)}
    assert node_ids == [m.metadata.dst_node_id for m in msgs]  # reply order
    for row, node in zip(updates.numpy(), node_ids, strict=True):
        np.testing.assert_allclose(row, step_of[node], atol=1e-6)


def _malformed_cases(theta, msg_by_node, extra_inst):
    """(node id, Message, expected reason) for every kind of bad reply."""
    good = _good(theta, 1.0)
    rec = sh.to_record(good)
    m = {"num-examples": 5}

    def with_array(key, array):
        r = sh.to_record(good)
        r[key] = array
        return r

    def without(key):
        r = sh.to_record(good)
        del r[key]
        return r

    w64 = good["w"].astype(np.float64)
    nan_w = good["w"].copy()
    nan_w[1, 2] = np.nan
    inf_b = good["b"].copy()
    inf_b[0] = -np.inf
    wrong_order = np.asfortranarray(good["w"])
    cases = [
        (101, sh.error_reply(msg_by_node[101]), R.ERROR_REPLY),
        (102, sh.reply(msg_by_node[102], good, m), R.WRONG_MESSAGE_TYPE),
        (103, sh.reply(msg_by_node[103], None, m), R.MISSING_ARRAY_RECORD),
        (
            104,
            sh.reply(msg_by_node[104], rec, m, extra={"more": sh.to_record(good)}),
            R.EXTRA_ARRAY_RECORD,
        ),
        (105, sh.reply(msg_by_node[105], good, None), R.MISSING_METRIC_RECORD),
        (
            106,
            sh.reply(msg_by_node[106], good, m, extra={"m2": MetricRecord({"a": 1})}),
            R.EXTRA_METRIC_RECORD,
        ),
        (107, sh.reply(msg_by_node[107], without("b"), m), R.MISSING_KEYS),
        (
            108,
            sh.reply(msg_by_node[108], with_array("z", Array(np.ones(2))), m),
            R.EXTRA_KEYS,
        ),
        (
            109,
            sh.reply(
                msg_by_node[109],
                with_array(
                    "w", _raw("float32", (4, 3), _npy(good["w"]), stype="torch.Tensor")
                ),
                m,
            ),
            R.WRONG_STYPE,
        ),
        (
            110,
            sh.reply(msg_by_node[110], with_array("w", Array(w64)), m),
            R.WRONG_DTYPE,
        ),
        (
            111,
            sh.reply(
                msg_by_node[111], with_array("w", _raw("float32", (4, 3), _npy(w64))), m
            ),
            R.WRONG_DTYPE,
        ),
        (
            112,
            sh.reply(
                msg_by_node[112], with_array("w", Array(good["w"].reshape(3, 4))), m
            ),
            R.WRONG_SHAPE,
        ),
        (
            113,
            sh.reply(
                msg_by_node[113],
                with_array("w", _raw("float32", (4, 3), _npy(good["w"].reshape(2, 6)))),
                m,
            ),
            R.WRONG_SHAPE,
        ),
        (
            114,
            sh.reply(
                msg_by_node[114],
                with_array("w", _raw("float32", (4, 3), _npy(good["w"])[:-4])),
                m,
            ),
            R.WRONG_BYTE_LENGTH,
        ),
        (
            115,
            sh.reply(
                msg_by_node[115],
                with_array("w", _raw("float32", (4, 3), _npy(good["w"]) + b"\0\0\0\0")),
                m,
            ),
            R.WRONG_BYTE_LENGTH,
        ),
        (
            116,
            sh.reply(
                msg_by_node[116],
                with_array(
                    "w", _raw("float32", (4, 3), b"not a numpy file at all" * 3)
                ),
                m,
            ),
            R.WRONG_BYTE_LENGTH,
        ),
        (
            117,
            sh.reply(
                msg_by_node[117], with_array("w", _raw("float32", (4, 3), b"")), m
            ),
            R.WRONG_BYTE_LENGTH,
        ),
        (
            118,
            sh.reply(msg_by_node[118], with_array("w", Array(nan_w)), m),
            R.NON_FINITE,
        ),
        (
            119,
            sh.reply(msg_by_node[119], with_array("b", Array(inf_b)), m),
            R.NON_FINITE,
        ),
        (
            120,
            sh.reply(msg_by_node[120], with_array("count", Array(np.array(7.0))), m),
            R.WRONG_DTYPE,
        ),
        (
            121,
            sh.reply(
                msg_by_node[121],
                with_array("count", _raw("int64", (), _npy(np.array(7))[:-1])),
                m,
            ),
            R.WRONG_BYTE_LENGTH,
        ),
        (
            122,
            sh.reply(
                msg_by_node[122],
                with_array(
                    "w", _raw("float32", (4, 3), b"\x93NUMPY\x01\x00" + b"{" * 30)
                ),
                m,
            ),
            R.WRONG_BYTE_LENGTH,
        ),
        (123, sh.reply(extra_inst, good, m), R.UNEXPECTED_NODE),
        (
            # The declared dtype contradicts the payload, a well-formed float32
            # .npy of the sent shape: the declaration is not trusted either way.
            125,
            sh.reply(
                msg_by_node[125],
                with_array("w", _raw("float64", (4, 3), _npy(good["w"]))),
                m,
            ),
            R.WRONG_DTYPE,
        ),
    ]
    # A Fortran-ordered payload is well formed: accepted and read correctly.
    accepted_fortran = sh.reply(
        msg_by_node[124], with_array("w", _raw("float32", (4, 3), _npy(wrong_order))), m
    )
    return cases, accepted_fortran


def test_every_malformed_reply_is_rejected_with_its_reason(caplog):
    theta = sh.model_arrays(1)
    strategy = sh.LocalMean(num_malicious_nodes=1)
    good_nodes = [1, 2, 3]
    bad_nodes = [*range(101, 123), 124, 125]
    msgs = sh.instructions(strategy, 3, theta, good_nodes + bad_nodes)
    by_node = {m.metadata.dst_node_id: m for m in msgs}
    # Node 102 answers an "evaluate" instruction: wrong message type.
    by_node[102] = Message(RecordDict(), dst_node_id=102, message_type="evaluate")
    stranger = Message(RecordDict(), dst_node_id=123, message_type="train")
    cases, fortran = _malformed_cases(theta, by_node, stranger)
    good = [
        sh.reply(by_node[n], _good(theta, s), {"num-examples": 5})
        for n, s in zip(good_nodes, [1.0, 2.0, 3.0], strict=True)
    ]
    bad = [c[1] for c in cases]
    replies = [good[0], *bad[:10], good[1], *bad[10:], fortran, good[2]]
    with caplog.at_level(logging.WARNING):
        arrays, metrics = strategy.aggregate_train(3, replies)
    # The Fortran-ordered reply is θ + 1 like good[0]: mean of 1, 2, 3, 1.
    np.testing.assert_allclose(
        sh.record_flat(arrays), sh.flat(theta) + 7 / 4, atol=1e-5
    )
    assert np.isfinite(sh.record_flat(arrays)).all()
    got = dict(
        zip(metrics["rejected-node-ids"], metrics["rejected-reasons"], strict=True)
    )
    assert got == {node: int(reason) for node, _, reason in cases}
    assert metrics["num-rejected"] == len(cases)
    assert sorted(metrics["node-ids"]) == [1, 2, 3, 124]
    report = strategy.history[-1]
    assert dict(report.rejected) == {node: reason.name for node, _, reason in cases}
    assert "NON_FINITE" in caplog.text and "118" in caplog.text


def test_duplicate_node_rejects_all_its_replies():
    theta = sh.model_arrays(2)
    strategy = sh.LocalMean(num_malicious_nodes=0)
    msgs = sh.instructions(strategy, 1, theta, [1, 2, 3])
    replies = [
        sh.reply(msgs[0], _good(theta, 1.0), {"n": 1}),
        sh.reply(msgs[0], _good(theta, 100.0), {"n": 1}),
        sh.reply(msgs[1], _good(theta, 2.0), {"n": 1}),
        sh.reply(msgs[2], _good(theta, 3.0), {"n": 1}),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    dup = msgs[0].metadata.dst_node_id
    assert metrics["rejected-node-ids"] == [dup, dup]
    assert metrics["rejected-reasons"] == [int(R.DUPLICATE_NODE)] * 2
    np.testing.assert_allclose(sh.record_flat(arrays), sh.flat(theta) + 2.5, atol=1e-6)


def test_weighted_aggregation_checks_num_examples():
    theta = sh.model_arrays(3)
    strategy = sh.LocalMean(num_malicious_nodes=0, weighted_aggregation=True)
    nodes = list(range(1, 10))
    msgs = sh.instructions(strategy, 2, theta, nodes)
    by_node = {m.metadata.dst_node_id: m for m in msgs}
    bad = {
        3: {"x": 1},
        4: {"num-examples": 0},
        5: {"num-examples": -3},
        6: {"num-examples": float("nan")},
        7: {"num-examples": float("inf")},
        8: {"num-examples": [1, 2]},
        9: {"num-examples": MAX_NUM_EXAMPLES + 1},
    }
    replies = [
        sh.reply(by_node[1], _good(theta, 1.0), {"num-examples": 1}),
        sh.reply(by_node[2], _good(theta, 4.0), {"num-examples": 3}),
    ]
    replies += [sh.reply(by_node[n], _good(theta, 50.0), mm) for n, mm in bad.items()]
    arrays, metrics = strategy.aggregate_train(2, replies)
    np.testing.assert_allclose(
        sh.record_flat(arrays), sh.flat(theta) + 13 / 4, atol=1e-5
    )
    got = dict(
        zip(metrics["rejected-node-ids"], metrics["rejected-reasons"], strict=True)
    )
    assert got[3] == R.MISSING_NUM_EXAMPLES
    assert all(got[n] == R.INVALID_NUM_EXAMPLES for n in range(4, 10))
    assert strategy.seen[2].tolist() == [1.0, 3.0]


def test_unweighted_by_default_ignores_claimed_sizes():
    theta = sh.model_arrays(3)
    strategy = sh.LocalMean(num_malicious_nodes=0)
    msgs = sh.instructions(strategy, 1, theta, [1, 2])
    replies = [
        sh.reply(msgs[0], _good(theta, 1.0), {"num-examples": 1}),
        sh.reply(msgs[1], _good(theta, 3.0), {"num-examples": 10**6}),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(sh.record_flat(arrays), sh.flat(theta) + 2.0, atol=1e-6)


def test_bound_failure_returns_unchanged_weights_and_says_why(caplog):
    theta = sh.model_arrays(4)
    strategy = sh.LocalMean(num_malicious_nodes=2)  # needs 5 valid replies
    msgs = sh.instructions(strategy, 5, theta, [1, 2, 3, 4, 5])
    replies = [
        sh.reply(msgs[0], _good(theta, 1.0), {"a": 1.0}),
        sh.reply(msgs[1], _good(theta, 1.0), {"a": 1.0}),
        sh.error_reply(msgs[2]),
        sh.reply(msgs[3], _good(theta, np.nan), {"a": 1.0}),
    ]
    with caplog.at_level(logging.WARNING):
        arrays, metrics = strategy.aggregate_train(5, replies)
    assert arrays is not None
    np.testing.assert_array_equal(sh.record_flat(arrays), sh.flat(theta))
    assert metrics["bound-failed"] == 1
    assert metrics["status"] == int(RoundStatus.BOUND_FAILED)
    assert metrics["min-nodes"] == 5 and metrics["num-valid"] == 2
    assert metrics["missing-node-ids"] == [msgs[4].metadata.dst_node_id]
    assert "model unchanged" in caplog.text
    assert strategy.history[-1].status == RoundStatus.BOUND_FAILED


def test_no_reply_at_all_keeps_model():
    theta = sh.model_arrays(4)
    strategy = sh.LocalMean(num_malicious_nodes=0)
    sh.instructions(strategy, 1, theta, [1, 2])
    arrays, metrics = strategy.aggregate_train(1, [])
    np.testing.assert_array_equal(sh.record_flat(arrays), sh.flat(theta))
    assert metrics["bound-failed"] == 1 and metrics["num-missing"] == 2


def test_fraction_train_samples_like_fedavg_and_rejects_unsampled_nodes():
    theta = sh.model_arrays(5)
    strategy = sh.LocalMean(
        fraction_train=0.5, min_train_nodes=2, num_malicious_nodes=0
    )
    nodes = list(range(1, 11))
    msgs = sh.instructions(strategy, 1, theta, nodes)
    sampled = sorted(m.metadata.dst_node_id for m in msgs)
    assert len(sampled) == 5 and set(sampled) <= set(nodes)
    unsampled = next(n for n in nodes if n not in sampled)
    stranger = Message(RecordDict(), dst_node_id=unsampled, message_type="train")
    replies = [sh.reply(m, _good(theta, 1.0), {"a": 1}) for m in msgs[:4]]
    replies.append(sh.reply(stranger, _good(theta, 1e3), {"a": 1}))
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(sh.record_flat(arrays), sh.flat(theta) + 1.0, atol=1e-6)
    assert metrics["rejected-node-ids"] == [unsampled]
    assert metrics["rejected-reasons"] == [int(R.UNEXPECTED_NODE)]
    assert metrics["missing-node-ids"] == [msgs[4].metadata.dst_node_id]
    # min_train_nodes wins over a small fraction, as in FedAvg.
    small = sh.LocalMean(fraction_train=0.1, min_train_nodes=3)
    assert len(sh.instructions(small, 1, theta, nodes)) == 3


def test_malicious_fraction_sets_f_from_valid_replies():
    theta = sh.model_arrays(6)
    strategy = sh.LocalMean(malicious_fraction=0.3)
    for rnd, answering, f in ((1, 10, 3), (2, 7, 2)):
        msgs = sh.instructions(strategy, rnd, theta, list(range(1, 11)))
        replies = [sh.reply(m, _good(theta, 1.0), {"a": 1}) for m in msgs[:answering]]
        _, metrics = strategy.aggregate_train(rnd, replies)
        assert metrics["f"] == f  # floor(0.3 * valid replies)


def test_server_learning_rate_and_momentum():
    theta = sh.model_arrays(7)
    strategy = sh.LocalMean(
        num_malicious_nodes=0, server_learning_rate=0.5, server_momentum=0.9
    )
    current = theta
    expected = sh.flat(theta)
    velocity = 0.0
    for rnd in (1, 2):
        msgs = sh.instructions(strategy, rnd, current, [1, 2])
        replies = [
            sh.reply(msgs[0], _good(current, 1.0), {"a": 1}),
            sh.reply(msgs[1], _good(current, 3.0), {"a": 1}),
        ]
        arrays, _ = strategy.aggregate_train(rnd, replies)
        velocity = 0.9 * velocity + 2.0
        expected = expected + 0.5 * velocity
        np.testing.assert_allclose(sh.record_flat(arrays), expected, atol=1e-5)
        current = {k: arrays[k].numpy() for k in arrays}


class _Explodes(sh.LocalMean):
    def aggregate_updates(self, *args, **kwargs):
        res = super().aggregate_updates(*args, **kwargs)
        agg = res.aggregate.clone()
        agg[0] = float("inf")
        return AggregationResult(agg, res.selected)


class _Raises(sh.LocalMean):
    def aggregate_updates(self, *args, **kwargs):
        raise ValueError("n=2 < 5 = bound")


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (_Explodes, RoundStatus.NON_FINITE_RESULT),
        (_Raises, RoundStatus.AGGREGATION_FAILED),
    ],
)
def test_rule_failures_keep_the_model(cls, status):
    theta = sh.model_arrays(8)
    strategy = cls(num_malicious_nodes=0)
    msgs = sh.instructions(strategy, 1, theta, [1, 2])
    replies = [sh.reply(m, _good(theta, 1.0), {"a": 1}) for m in msgs]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(sh.record_flat(arrays), sh.flat(theta))
    assert metrics["status"] == int(status)


def test_float64_model_updates_are_exact_and_dtypes_kept():
    theta = {
        "w": np.random.default_rng(0).normal(size=(5,)) * 1e3,  # float64
        "h": np.ones((2, 2), dtype=np.float16),
    }
    strategy = sh.LocalMean(num_malicious_nodes=0)
    msgs = sh.instructions(strategy, 1, theta, [1, 2])
    replies = [
        sh.reply(
            m, {"w": theta["w"] + 0.125, "h": theta["h"] + np.float16(1)}, {"a": 1}
        )
        for m in msgs
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays["w"].dtype == "float64" and arrays["h"].dtype == "float16"
    np.testing.assert_allclose(
        arrays["w"].numpy(), theta["w"] + 0.125, rtol=0, atol=1e-9
    )
    np.testing.assert_array_equal(arrays["h"].numpy(), np.full((2, 2), 2, np.float16))


def test_client_metrics_skip_non_finite_and_strings():
    theta = sh.model_arrays(9)
    strategy = sh.LocalMean(num_malicious_nodes=0)
    msgs = sh.instructions(strategy, 1, theta, [1, 2, 3])
    replies = [
        sh.reply(msgs[0], _good(theta, 1.0), {"loss": 1.0, "hist": [1.0, 2.0]}),
        sh.reply(
            msgs[1], _good(theta, 1.0), {"loss": float("nan"), "hist": [3.0, 4.0]}
        ),
        sh.reply(msgs[2], _good(theta, 1.0), {"loss": 3.0, "hist": [1.0]}),
    ]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["loss"] == pytest.approx(2.0)
    assert metrics["hist"] == pytest.approx([2.0, 3.0])


def test_aggregate_evaluate_skips_bad_replies():
    theta = sh.model_arrays(9)
    strategy = sh.LocalMean()
    msgs = list(
        strategy.configure_evaluate(
            1, sh.to_record(theta), ConfigRecord(), sh.StaticGrid([1, 2, 3, 4])
        )
    )
    replies = [
        sh.reply(msgs[0], None, {"num-examples": 1, "eval-acc": 0.5}),
        sh.reply(msgs[1], None, {"num-examples": 3, "eval-acc": 1.0}),
        sh.reply(msgs[2], None, {"num-examples": -1, "eval-acc": 0.0}),
        sh.error_reply(msgs[3]),
    ]
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics["eval-acc"] == pytest.approx(0.875)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_malicious_nodes": 1, "malicious_fraction": 0.1}, "malicious_fraction"),
        ({"num_malicious_nodes": -1}, "num_malicious_nodes"),
        ({"num_malicious_nodes": 1.5}, "num_malicious_nodes"),
        ({"malicious_fraction": 0.5}, "malicious_fraction"),
        ({"malicious_fraction": -0.1}, "malicious_fraction"),
        ({"server_learning_rate": 0.0}, "server_learning_rate"),
        ({"server_learning_rate": float("nan")}, "server_learning_rate"),
        ({"server_momentum": 1.0}, "server_momentum"),
        ({"device": "tpu"}, "device"),
        ({"fraction_train": 1.5}, "fraction_train"),
        ({"weighted_aggregation": "yes"}, "weighted_aggregation"),
        ({"distance_sketch": 8}, r"distance_sketch=8: allowed values are 0 \(exact"),
        ({"distance_sketch": True}, r"distance_sketch=True: allowed values are 0"),
    ],
)
def test_bad_configuration_raises_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sh.LocalMean(**kwargs)


def test_aggregate_train_without_configure_is_a_clear_error():
    with pytest.raises(RuntimeError, match="configure_train"):
        sh.LocalMean().aggregate_train(1, [])


def test_layout_unflattens_global_flat():
    theta = sh.model_arrays(10)
    strategy = sh.LocalMean()
    sh.instructions(strategy, 1, theta, [1, 2])
    views = strategy.layout.unflatten(strategy._sent.theta)
    np.testing.assert_array_equal(views["w"], theta["w"])
    assert strategy.layout.float_keys == ("w", "b")
    assert isinstance(sh.to_record(theta), ArrayRecord)


def test_unreadable_reply_object_is_rejected_as_malformed():
    theta = sh.model_arrays(11)
    strategy = sh.LocalMean()
    msgs = sh.instructions(strategy, 1, theta, [1, 2])
    replies = [sh.reply(m, _good(theta, 1.0), {"a": 1}) for m in msgs]
    arrays, metrics = strategy.aggregate_train(1, [*replies, object()])
    np.testing.assert_allclose(sh.record_flat(arrays), sh.flat(theta) + 1.0, atol=1e-6)
    assert metrics["rejected-node-ids"] == [0]
    assert metrics["rejected-reasons"] == [int(R.MALFORMED)]


def test_huge_finite_values_are_not_taken_for_non_finite_ones():
    """Two entries of 3e38: their float32 sum overflows, the values are finite, so
    the reply is valid (only a NaN or an infinity rejects one as NON_FINITE)."""
    theta = sh.model_arrays(4)
    strategy = sh.LocalMean(num_malicious_nodes=0)
    msgs = sh.instructions(strategy, 1, theta, [1, 2, 3])
    huge = _good(theta, 1.0)
    huge["w"][0, :2] = 3e38
    replies = [
        sh.reply(msgs[0], _good(theta, 1.0), {"num-examples": 5}),
        sh.reply(msgs[1], huge, {"num-examples": 5}),
        sh.reply(msgs[2], _good(theta, 1.0), {"num-examples": 5}),
    ]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["num-rejected"] == 0, metrics["rejected-reasons"]
    assert sorted(metrics["node-ids"]) == [1, 2, 3]


def _plan(decide, momentum=0.0, bound=lambda f: 1):
    import torch

    from flwr_byz.strategy.round_core import RoundPlan

    return RoundPlan(
        name="plain",
        budget=lambda n: 0,
        bound=bound,
        decide=decide,
        streams_mean=False,
        weighted_by=None,
        device=torch.device("cpu"),
        lr=1.0,
        momentum=momentum,
    )


def _candidates(theta, steps):
    from flwr_byz.strategy.reply_validation import Candidate

    return [
        Candidate(node, sh.to_record(_good(theta, step)), {})
        for node, step in steps.items()
    ]


def test_the_round_core_runs_a_plan_of_plain_functions_and_returns_the_state():
    from flwr_byz.aggregation.mean import mean
    from flwr_byz.strategy.reply_validation import SentModel
    from flwr_byz.strategy.round_core import RoundState, run_robust_round

    theta = sh.model_arrays(3)
    sent = SentModel.from_record(4, sh.to_record(theta), [1, 2, 3])
    seen = []

    def decide(round_input):
        seen.append(round_input)
        return mean(round_input.updates)

    state = RoundState()
    plan = _plan(decide, momentum=0.5)
    first = run_robust_round(plan, sent, _candidates(theta, {1: 1.0, 2: 3.0}), state)
    # The argument is not changed: the next state comes back in the outcome.
    assert state.momentum is None and state.buffer is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.momentum = first.state.momentum  # type: ignore[misc]
    assert first.report.status == RoundStatus.OK
    np.testing.assert_allclose(first.state.momentum, 2.0)
    assert first.state.buffer is not None
    # The rule saw one RoundInput: the round, the rows, f and the sent layout.
    (got,) = seen
    assert got.server_round == 4 and got.node_ids == [1, 2] and got.f == 0
    assert got.layout is sent.layout
    # Missing nodes are found once, by validation, and reported as such.
    assert first.report.missing == [3]
    assert first.report.missing_reasons == ["TIMED_OUT"]
    # The next round starts from the returned state: v = 0.5 * 2 + 2.
    second = run_robust_round(
        plan, sent, _candidates(theta, {1: 2.0, 2: 2.0}), first.state
    )
    np.testing.assert_allclose(second.state.momentum, 3.0)
    np.testing.assert_allclose(sh.flat(second.arrays), sh.flat(theta) + 3.0, atol=1e-6)
    assert second.state.buffer is first.state.buffer  # the storage is reused


def test_validate_replies_returns_what_it_found():
    from flwr_byz.strategy.reply_validation import (
        Candidate,
        SentModel,
        validate_replies,
    )
    from flwr_byz.strategy.round_report import MissingReason

    theta = sh.model_arrays(5)
    sent = SentModel.from_record(1, sh.to_record(theta), [1, 2, 3, 4])
    candidates = [
        *_candidates(theta, {1: 1.0, 9: 1.0}),
        Candidate(2, None, None, RejectReason.ERROR_REPLY),
    ]
    valid = validate_replies(
        sent,
        candidates,
        weighted_by=None,
        absent={4: MissingReason.NODE_UNAVAILABLE},
    )
    assert valid.node_ids == [1]
    assert valid.rejected == [(9, R.UNEXPECTED_NODE), (2, R.ERROR_REPLY)]
    assert valid.missing == [
        (3, MissingReason.TIMED_OUT),
        (4, MissingReason.NODE_UNAVAILABLE),
    ]
