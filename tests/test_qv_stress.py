"""The QV-set stress keys: ``qv-class-shares`` (skew) and ``qv-label-noise``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flwr_byz.app.client_data import load_adaptive_d0
from flwr_byz.data import load_server_data
from flwr_byz.data.splitting import share_counts, wrong_labels


def _qv(**keys):
    return load_server_data({"seed": 0, **keys}, 10).qv


def test_the_default_qv_set_is_balanced() -> None:
    assert torch.bincount(_qv().labels).tolist() == [5, 5]


@pytest.mark.parametrize(
    ("shares", "size", "expected"),
    [("0.9,0.1", 10, [9, 1]), ("1,9", 10, [1, 9]), ("0,1", 4, [0, 4])],
)
def test_class_shares_skew_the_draw(shares, size, expected) -> None:
    qv = _qv(**{"qv-class-shares": shares, "qv-size": size})
    assert torch.bincount(qv.labels, minlength=2).tolist() == expected


def test_share_counts_sum_to_the_total_by_largest_remainder() -> None:
    assert share_counts((0.9, 0.1), 2) == [2, 0]
    assert share_counts((1, 1, 1), 10) == [4, 3, 3]
    assert share_counts((0.15, 0.85), 10) == [2, 8]
    for total in range(12):
        assert sum(share_counts((0.3, 0.3, 0.4), total)) == total


def test_label_noise_changes_that_many_labels_and_nothing_else() -> None:
    clean, noisy = _qv(), _qv(**{"qv-label-noise": 0.2})
    assert torch.equal(clean.features, noisy.features)
    assert int((clean.labels != noisy.labels).sum()) == 2
    again = _qv(**{"qv-label-noise": 0.2})
    assert torch.equal(noisy.labels, again.labels)


def test_wrong_labels_always_pick_another_class() -> None:
    labels = np.arange(30) % 3
    out = wrong_labels(labels, 0.5, 3, seed=1)
    changed = out != labels
    assert int(changed.sum()) == 15
    assert set(out.tolist()) <= {0, 1, 2}


def test_the_attackers_draw_the_distribution_not_the_stressed_set() -> None:
    cfg = {"seed": 0, "qv-label-noise": 0.5, "qv-class-shares": "1,0"}
    clean = load_adaptive_d0({"seed": 0}, 10)
    assert torch.equal(load_adaptive_d0(cfg, 10).labels, clean.labels)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("qv-class-shares", "a,b"),
        ("qv-class-shares", "-1,2"),
        ("qv-class-shares", "0,0"),
        ("qv-class-shares", "1,1,1"),
        ("qv-label-noise", 1.0),
        ("qv-label-noise", -0.1),
    ],
)
def test_bad_stress_values_name_the_key(key, value) -> None:
    with pytest.raises(ValueError, match=key):
        _qv(**{key: value})


def test_a_class_the_pool_lacks_is_refused_with_the_counts() -> None:
    with pytest.raises(ValueError, match="fewer than the"):
        _qv(**{"qv-class-shares": "1,0", "qv-size": 900})
