"""Reply decoding: the few-call path for small float32 models decides exactly as
the general decoder (same verdict, same reason, same update bit for bit)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from flwr_byz.strategy import reply_validation as rv
from flwr_byz.strategy.reply_validation import (
    Candidate,
    RejectReason,
    SentModel,
    decode_update_into,
    validate_replies,
)
from flwr_byz.strategy.suspicion import sample_index


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4), dtype=np.float32)
    w[0, 0] = np.float32(-3e38)  # a reply's +3e38 there: an update beyond float32
    return {
        "w": w,
        "steps": np.array([3, 1], dtype=np.int64),
        "b": rng.standard_normal(6, dtype=np.float32),
        "v": rng.standard_normal((2, 3), dtype=np.float32),
    }


def _npy(value: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False, **save)
    return buffer.getvalue()


def _sent(theta: dict[str, np.ndarray]) -> SentModel:
    record = ArrayRecord({k: Array(v) for k, v in theta.items()})
    return SentModel.from_record(1, record, [1], {1: "train"})


def _reply(theta: dict[str, np.ndarray], seed: int) -> dict[str, Array]:
    rng = np.random.default_rng(seed)
    out = {}
    for key, value in theta.items():
        if value.dtype.kind == "f":
            value = value + rng.standard_normal(value.shape, dtype=np.float32)
        out[key] = Array(np.ascontiguousarray(value))
    return out


def _raw(value: np.ndarray, data: bytes, **fields) -> Array:
    """An Array whose declared fields and bytes are set independently."""
    declared = {
        "dtype": str(value.dtype),
        "shape": tuple(value.shape),
        "stype": "numpy.ndarray",
        "data": data,
    }
    declared.update(fields)
    array = Array(np.zeros(1, np.float32))
    for name, field in declared.items():
        array.__dict__[name] = field
    return array


def _variants(theta: dict[str, np.ndarray]) -> dict[str, dict[str, Array]]:
    """One well-formed reply and replies broken (or legitimately re-encoded) in
    each way the decoder distinguishes."""
    base = _reply(theta, 1)
    w = np.asarray(base["w"].numpy())
    out: dict[str, dict[str, Array]] = {"valid": base}

    def with_w(array: Array) -> dict[str, Array]:
        return {**base, "w": array}

    nan = w.copy()
    nan[2, 1] = np.nan
    out["nan"] = with_w(Array(nan))
    inf = w.copy()
    inf[5, 3] = np.inf
    out["inf"] = with_w(Array(inf))
    huge = w.copy()
    huge[0, 0] = np.float32(3e38)
    out["overflow"] = with_w(Array(huge))  # 3e38 − (−3e38) overflows
    # Same byte length and header length, other shape in the header.
    out["header shape"] = with_w(_raw(w, _npy(w.reshape(4, 6))))
    out["header dtype"] = with_w(_raw(w, _npy(w.view(np.int32))))
    out["declared shape"] = with_w(_raw(w, _npy(w), shape=(4, 6)))
    out["declared dtype"] = with_w(_raw(w, _npy(w), dtype="float64"))
    out["stype"] = with_w(_raw(w, _npy(w), stype="torch.Tensor"))
    out["short"] = with_w(_raw(w, _npy(w)[:-4]))
    out["long"] = with_w(_raw(w, _npy(w) + b"\0\0\0\0"))
    out["fortran"] = with_w(_raw(w, _npy(np.asfortranarray(w))))
    out["list shape"] = with_w(_raw(w, _npy(w), shape=[6, 4]))
    out["bytearray"] = with_w(_raw(w, bytearray(_npy(w))))
    out["reordered"] = {k: base[k] for k in ("b", "w", "v", "steps")}
    out["missing"] = {k: v for k, v in base.items() if k != "v"}
    out["extra"] = {**base, "z": Array(np.zeros(2, np.float32))}
    steps = np.array([3, 1], dtype=np.int64)
    out["int header"] = {**base, "steps": _raw(steps, _npy(steps.astype(np.int32)))}
    out["int short"] = {**base, "steps": _raw(steps, _npy(steps)[:-1])}
    return out


def _slow(sent: SentModel, arrays) -> tuple[RejectReason | None, np.ndarray]:
    row = np.full(sent.layout.d, np.nan, dtype=np.float32)
    flat = {k: v.reshape(-1) for k, v in sent.arrays.items()}
    return decode_update_into(arrays, sent.layout, flat, row, sent.headers), row


EXPECTED = {
    "valid": None,
    "nan": RejectReason.NON_FINITE,
    "inf": RejectReason.NON_FINITE,
    "overflow": RejectReason.UPDATE_OVERFLOW,
    "header shape": RejectReason.WRONG_SHAPE,
    "header dtype": RejectReason.WRONG_DTYPE,
    "declared shape": RejectReason.WRONG_SHAPE,
    "declared dtype": RejectReason.WRONG_DTYPE,
    "stype": RejectReason.WRONG_STYPE,
    "short": RejectReason.WRONG_BYTE_LENGTH,
    "long": RejectReason.WRONG_BYTE_LENGTH,
    "fortran": None,
    "list shape": None,
    "bytearray": None,
    "reordered": None,
    "missing": RejectReason.MISSING_KEYS,
    "extra": RejectReason.EXTRA_KEYS,
    "int header": RejectReason.WRONG_DTYPE,
    "int short": RejectReason.WRONG_BYTE_LENGTH,
}


def test_sent_plan_only_for_float32_c_order_models():
    theta = _model()
    assert rv._sent_plan(_sent(theta)) is not None
    assert rv._sent_plan(_sent({**theta, "b": theta["b"].astype(np.float64)})) is None
    big = {"w": np.zeros(rv._SMALL_ROW + 1, dtype=np.float32)}
    assert rv._sent_plan(_sent(big)) is not None
    fortran = {**theta, "w": np.asfortranarray(theta["w"])}
    assert rv._sent_plan(_sent(fortran)) is None


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_validation_decides_as_the_general_decoder(case):
    theta = _model()
    sent = _sent(theta)
    assert rv._sent_plan(sent) is not None
    arrays = _variants(theta)[case]
    reason, row = _slow(sent, arrays)
    assert reason == EXPECTED[case]
    found = validate_replies(sent, [Candidate(1, arrays, {})], weighted_by=None)
    if reason is None:
        assert found.node_ids == [1] and not found.rejected
        assert found.updates[0].tobytes() == row.tobytes()
    else:
        assert found.node_ids == []
        assert found.rejected == [(1, reason)]


def test_the_few_call_path_takes_the_usual_reply():
    """The well-formed reply is decoded by the few-call path itself, and a reply
    it must not accept is left to the general decoder."""
    theta = _model()
    sent = _sent(theta)
    plan = rv._sent_plan(sent)
    variants = _variants(theta)
    row = np.empty(sent.layout.d, np.float32)
    keys = sent.layout.keys
    assert rv._decode_small(variants["valid"], keys, plan, sent.theta, row)
    assert row.tobytes() == _slow(sent, variants["valid"])[1].tobytes()
    with np.errstate(over="ignore", invalid="ignore"):  # as validation calls it
        for case, reason in EXPECTED.items():
            if reason is not None:
                assert not rv._decode_small(
                    variants[case], keys, plan, sent.theta, row
                ), case


def test_streamed_mean_uses_the_same_decoding():
    theta = _model()
    sent = _sent(theta)
    variants = _variants(theta)
    cands = [Candidate(i + 1, a, {}) for i, a in enumerate(variants.values())]
    sent = SentModel.from_record(
        1, sent.record, [c.node_id for c in cands], {c.node_id: "train" for c in cands}
    )
    averaged = rv.average_replies(sent, cands, weighted_by=None, columns=None)
    full = validate_replies(sent, cands, weighted_by=None)
    assert averaged.node_ids == full.node_ids
    assert averaged.rejected == full.rejected
    expected = full.updates.astype(np.float64).mean(axis=0).astype(np.float32)
    np.testing.assert_allclose(averaged.mean, expected, rtol=1e-6, atol=1e-6)


def _large_model() -> dict[str, np.ndarray]:
    """Enough values for a sampled suspicion (columns spread over both arrays)."""
    rng = np.random.default_rng(3)
    return {
        "w": rng.standard_normal((1000, 3), dtype=np.float32),
        "steps": np.array([2], dtype=np.int64),
        "b": rng.standard_normal(40, dtype=np.float32),
    }


@pytest.mark.parametrize("in_one_row", [True, False])
def test_the_streamed_mean_sums_a_reply_serialised_as_sent_as_it_was_sent(
    in_one_row, monkeypatch
):
    """The few-call path of the streamed mean adds the reply itself, ``w``, to the
    float64 sum, and writes its suspicion sample as the exact decoder writes
    ``w − θ``, bit for bit: read from one row (small models) or from each
    payload (large ones)."""
    theta = _large_model()
    if not in_one_row:
        monkeypatch.setattr(rv, "_SMALL_ROW", 100)  # this model counts as large
    sent = _sent(theta)
    columns = sample_index(80, sent.layout.d)
    assert columns is not None and columns[-1] >= theta["w"].size  # both arrays
    summed = rv._SummedAsSent.of(sent, columns)
    assert (summed.row is not None) == in_one_row
    arrays = _reply(theta, 5)
    total = np.zeros(sent.layout.d)
    dest = np.full(len(columns), np.nan, dtype=np.float32)
    assert summed.add(Candidate(1, arrays, {}), total, 1.0, dest)
    sent_w = np.concatenate([np.asarray(arrays[k].numpy()).ravel() for k in ("w", "b")])
    assert np.array_equal(total, sent_w.astype(np.float64))
    reason, row = _slow(sent, arrays)
    assert reason is None and dest.tobytes() == row[columns].tobytes()


@pytest.mark.parametrize("in_one_row", [True, False])
@pytest.mark.parametrize(
    "case", ["nan", "inf", "overflow", "fortran", "reordered", "short", "int short"]
)
def test_the_streamed_mean_leaves_every_other_reply_to_the_exact_decoder(
    case, in_one_row, monkeypatch
):
    if not in_one_row:
        monkeypatch.setattr(rv, "_SMALL_ROW", 10)  # this model counts as large
    theta = _model()
    sent = _sent(theta)
    summed = rv._SummedAsSent.of(sent, None)
    assert (summed.row is not None) == in_one_row
    total = np.zeros(sent.layout.d)
    dest = np.zeros(sent.layout.d, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # as validation calls it
        taken = summed.add(Candidate(1, _variants(theta)[case], {}), total, 1.0, dest)
    assert not taken and not total.any() and not dest.any()


def test_the_streamed_mean_of_replies_the_exact_decoder_took_is_the_mean():
    """A reply whose values are finite but square past float32 (1e30 here) is
    decoded exactly, and counts in the mean like the others."""
    theta = _model()
    big = _reply(theta, 2)
    w = np.asarray(big["w"].numpy()).copy()
    w[1, 1] = np.float32(1e30)
    big["w"] = Array(w)
    cands = [Candidate(1, _reply(theta, 1), {}), Candidate(2, big, {})]
    sent = SentModel.from_record(1, _sent(theta).record, [1, 2], {})
    averaged = rv.average_replies(sent, cands, weighted_by=None, columns=None)
    full = validate_replies(sent, cands, weighted_by=None)
    assert averaged.node_ids == full.node_ids == [1, 2]
    expected = full.updates.astype(np.float64).mean(axis=0).astype(np.float32)
    np.testing.assert_allclose(averaged.mean, expected, rtol=1e-6, atol=1e-6)


def test_a_sent_model_that_is_not_finite_leaves_every_reply_to_the_exact_decoder():
    theta = _model()
    theta["b"][2] = np.inf
    sent = SentModel.from_record(1, _sent(theta).record, [1], {})
    assert rv._SummedAsSent.of(sent, None) is None
    cands = [Candidate(1, _reply(_model(), 1), {})]
    averaged = rv.average_replies(sent, cands, weighted_by=None, columns=None)
    full = validate_replies(sent, cands, weighted_by=None)
    assert averaged.rejected == full.rejected == [(1, RejectReason.UPDATE_OVERFLOW)]
