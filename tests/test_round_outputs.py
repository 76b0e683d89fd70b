"""The new model's ArrayRecord: the bytes ``numpy.save`` writes, every array."""

from __future__ import annotations

import io

import numpy as np
import pytest
from strategy_helpers import instructions, reply, server_identity

from flwr_byz.strategy import FABA, Mean


def _npy(value: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "w": rng.standard_normal((4, 3)).astype(np.float32),
        "wide": rng.standard_normal((3, 5)).astype(np.float64),
        "count": np.array(7, dtype=np.int64),
        "scale": np.array(0.5, dtype=np.float32),
        "col": np.asfortranarray(rng.standard_normal((2, 3)).astype(np.float32)),
        "b": rng.standard_normal(3).astype(np.float32),
        "bn.running_var": np.abs(rng.standard_normal(3)).astype(np.float32),
    }


@pytest.mark.parametrize("make", [Mean, lambda: FABA(num_malicious_nodes=1)])
def test_new_arrays_are_numpy_save_bytes(make):
    theta = _model()
    with server_identity():
        strategy = make()
        sent = instructions(strategy, 1, theta, [1, 2, 3, 4, 5])
        rng = np.random.default_rng(0)
        replies = [
            reply(
                msg,
                {
                    k: (v + rng.standard_normal(v.shape)).astype(v.dtype)
                    if v.dtype.kind == "f"
                    else v
                    for k, v in theta.items()
                },
                {"num-examples": 1},
            )
            for msg in sent
        ]
        record, _ = strategy.aggregate_train(1, replies)
    assert list(record) == list(theta)
    assert strategy.history[-1].status.name == "OK"
    for key, value in theta.items():
        array = record[key]
        new = array.numpy()
        assert new.dtype == value.dtype and new.shape == value.shape
        assert array.dtype == str(value.dtype)
        assert array.shape == value.shape
        assert array.stype == "numpy.ndarray"
        assert array.data == _npy(np.array(new, order="C")), key
        if value.dtype.kind == "f":
            assert not np.array_equal(new, value), key  # the model moved
    assert record["count"].numpy() == 7
