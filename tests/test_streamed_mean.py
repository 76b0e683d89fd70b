"""Mean averages replies while it decodes them, and decides as the matrix path does."""

from __future__ import annotations

import numpy as np
import pytest
import strategy_helpers as sh
import torch

from flwr_byz.strategy import Mean
from flwr_byz.strategy.suspicion import median_distances, sample_index, suspected_rows


class MatrixMean(Mean):
    """The same rule through the (n, d) matrix: it overrides the hook."""

    def aggregate_updates(self, *args, **kwargs):
        return super().aggregate_updates(*args, **kwargs)


def _model(seed: int, rows: int) -> dict[str, np.ndarray]:
    """model_arrays with ``rows × 3`` weights (rows = 1000: a sampled suspicion)."""
    theta = sh.model_arrays(seed)
    theta["w"] = np.random.default_rng(seed).normal(size=(rows, 3)).astype(np.float32)
    return theta


def _round(strategy, weighted_sizes=None, seed=0, n=80, rows=1000):
    theta = _model(seed, rows)
    d = theta["w"].size + theta["b"].size
    with sh.server_identity():
        msgs = sh.instructions(strategy, 1, theta, range(1, n + 1))
        replies = []
        for msg in sorted(msgs, key=lambda m: m.metadata.dst_node_id):
            node = msg.metadata.dst_node_id
            rng = np.random.default_rng([seed, node])
            delta = rng.normal(size=d).astype(np.float32) * rng.uniform(0.1, 3.0)
            if node % 9 == 4:
                delta[d // 2 :] *= 1e3  # far off in the second half: suspected
            arrays = sh.shifted(theta, delta)
            if node % 13 == 7:
                arrays["w"] = np.full((rows, 3), np.nan, np.float32)  # rejected
            size = 1 if weighted_sizes is None else int(weighted_sizes[node % 4])
            replies.append(sh.reply(msg, arrays, {"num-examples": size}))
        arrays, _ = strategy.aggregate_train(1, replies)
    return sh.record_flat(arrays), strategy.history[-1]


@pytest.mark.parametrize("weighted", [False, True])
def test_the_streamed_mean_equals_the_matrix_mean_and_reports_alike(weighted):
    sizes = [3, 10, 1, 40] if weighted else None
    kwargs = {"weighted_aggregation": weighted}
    streamed = Mean(**kwargs)
    matrix = MatrixMean(**kwargs)
    assert streamed.streams_mean and not matrix.streams_mean
    got, r_got = _round(streamed, sizes)
    want, r_want = _round(matrix, sizes)
    # float64 sums (streamed) against a float32 product (matrix): rounding only.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert r_got.rejected == r_want.rejected and r_got.rejected
    assert r_got.node_ids == r_want.node_ids
    assert r_got.suspected == r_want.suspected and r_got.suspected
    np.testing.assert_allclose(r_got.weights, r_want.weights, rtol=1e-6)
    assert r_got.status == r_want.status
    # No (n, d) matrix was built for the streamed round.
    assert streamed.round_state.buffer is None
    assert matrix.round_state.buffer is not None


def test_the_streamed_mean_of_updates_near_the_float32_limit_is_finite():
    top = float(np.finfo(np.float32).max)
    theta = {k: np.zeros_like(v) for k, v in sh.model_arrays(1).items()}
    strategy = Mean()
    with sh.server_identity():
        msgs = sh.instructions(strategy, 1, theta, range(1, 6))
        replies = [
            sh.reply(m, sh.shifted(theta, np.float32(top)), {"n": 1}) for m in msgs
        ]
        arrays, _ = strategy.aggregate_train(1, replies)
    values = sh.record_flat(arrays)
    assert np.isfinite(values).all()
    np.testing.assert_allclose(values, top, rtol=1e-6)


def test_a_presampled_matrix_gives_the_suspicion_of_the_whole_matrix():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(200, 5000)).astype(np.float32))
    x[7] *= 50.0
    index = sample_index(200, 5000)
    assert index is not None and 128 <= len(index) < 5000
    presampled = x[:, torch.from_numpy(index)].contiguous()
    np.testing.assert_array_equal(
        median_distances(presampled, sampled=True), median_distances(x)
    )
    suspected = suspected_rows(x)
    assert suspected_rows(presampled, sampled=True) == suspected and 7 in suspected
