"""Hypothesis fuzz of train replies: never raises, the model stays finite."""

from __future__ import annotations

import io

import numpy as np
import strategy_helpers as sh
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flwr_byz import strategy as strategies

NODES = list(range(1, 8))
THETA = sh.model_arrays(0)

_floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
_dtypes = st.sampled_from(
    ["float32", "float64", "float16", "int64", "int32", "uint8", "bool", "complex64"]
)
_shapes = st.sampled_from([(4, 3), (3,), (), (3, 4), (12,), (0,), (4, 3, 1)])


def _npy(value: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, value, allow_pickle=False)
    return buf.getvalue()


@st.composite
def _array(draw, key: str) -> Array:
    """A well-formed, subtly wrong or garbage Array for ``key``."""
    base = THETA[key]
    kind = draw(
        st.sampled_from(
            ["good", "values", "dtype", "shape", "bytes", "raw", "declared"]
        )
    )
    if kind == "good":
        return Array(
            base + np.asarray(draw(_floats), dtype=base.dtype)
            if base.dtype.kind == "f"
            else base.copy()
        )
    if kind == "values":
        values = draw(st.lists(_floats, min_size=base.size, max_size=base.size))
        return Array(
            np.asarray(values, dtype=np.float64).astype(base.dtype).reshape(base.shape)
        )
    if kind == "dtype":
        return Array(np.zeros(base.shape, dtype=draw(_dtypes)))
    if kind == "shape":
        return Array(np.zeros(draw(_shapes), dtype=base.dtype))
    if kind == "bytes":
        data = bytearray(_npy(base))
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
        cut = draw(st.integers(0, len(data)))
        return Array(
            dtype=str(base.dtype),
            shape=tuple(base.shape),
            stype="numpy.ndarray",
            data=bytes(data[:cut]),
        )
    if kind == "raw":
        return Array(
            dtype=str(base.dtype),
            shape=tuple(base.shape),
            stype=draw(st.sampled_from(["numpy.ndarray", "torch", ""])),
            data=draw(st.binary(max_size=200)),
        )
    # Declared fields disagree with a valid payload.
    return Array(
        dtype=draw(st.sampled_from(["float32", "int64", "weird"])),
        shape=draw(_shapes),
        stype="numpy.ndarray",
        data=_npy(base),
    )


@st.composite
def _metrics(draw) -> MetricRecord:
    values = st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.floats(),
        st.lists(st.floats(), max_size=3),
        st.lists(st.integers(-5, 5), max_size=3),
    )
    keys = st.sampled_from(["num-examples", "train-loss", "acc", "x"])
    return MetricRecord(draw(st.dictionaries(keys, values, max_size=4)))


@st.composite
def _content(draw, instruction: Message) -> Message:
    kind = draw(st.sampled_from(["error", "records", "records", "records"]))
    if kind == "error":
        return sh.error_reply(instruction)
    content = RecordDict()
    for i in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
        keys = draw(
            st.lists(
                st.sampled_from(["w", "b", "count", "extra"]),
                unique=True,
                min_size=0,
                max_size=4,
            )
        )
        if draw(st.booleans()):
            keys = ["w", "b", "count"]
        record = ArrayRecord({k: draw(_array(k if k in THETA else "b")) for k in keys})
        content[f"arrays{i}"] = record
    for i in range(draw(st.sampled_from([0, 1, 1, 2]))):
        content[f"metrics{i}"] = draw(_metrics())
    return Message(content, reply_to=instruction)


_STRATEGIES = st.sampled_from(
    [
        lambda: strategies.FABA(num_malicious_nodes=1),
        lambda: strategies.Krum(num_malicious_nodes=1),
        lambda: strategies.Median(),
        lambda: strategies.TrimmedMean(beta=0.2),
        lambda: strategies.GeoMed(malicious_fraction=0.2, method="weiszfeld"),
        lambda: strategies.Mean(weighted_aggregation=True),
        lambda: strategies.FLTrust(
            model_factory=sh.Linear43, root_set=sh.linear43_data(0, 8)
        ),
        lambda: strategies.Zeno(
            model_factory=sh.Linear43,
            qv_set=sh.linear43_data(0, 8),
            num_malicious_nodes=1,
        ),
    ]
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), make=_STRATEGIES)
def test_fuzzed_replies_never_crash_and_never_poison_with_nan(data, make):
    with sh.server_identity():
        strategy = make()
        msgs = sh.instructions(strategy, 1, THETA, NODES)
        replies = []
        for m in msgs:
            if data.draw(st.booleans()):
                replies.append(
                    sh.reply(
                        m,
                        {
                            k: v + np.asarray(0.1, v.dtype)
                            if v.dtype.kind == "f"
                            else v
                            for k, v in THETA.items()
                        },
                        {"num-examples": 5},
                    )
                )
            else:
                replies.append(data.draw(_content(m)))
        # Strangers and duplicates too.
        if data.draw(st.booleans()):
            stranger = Message(RecordDict(), dst_node_id=999, message_type="train")
            replies.append(sh.reply(stranger, dict(THETA), {"num-examples": 5}))
        if data.draw(st.booleans()) and replies:
            replies.append(replies[0])
        arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and list(arrays.keys()) == list(THETA)
    for key, value in THETA.items():
        got = arrays[key].numpy()
        assert got.dtype == value.dtype and got.shape == value.shape
    assert np.isfinite(sh.record_flat(arrays)).all()
    assert int(arrays["count"].numpy()) == int(THETA["count"])
    assert metrics["num-valid"] + metrics["num-rejected"] == len(replies)
    sent_ids = {m.metadata.src_node_id for m in replies}
    assert set(metrics["rejected-node-ids"]) <= sent_ids
    assert len(metrics["rejected-reasons"]) == metrics["num-rejected"]
