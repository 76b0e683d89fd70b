"""The round's parts: a pure keyword-only server step, one round state, no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from flwr_byz.strategy.model_layout import decode_arrayrecord
from flwr_byz.strategy.round_core import RoundState
from flwr_byz.strategy.server_step import server_step

PACKAGE = Path(__file__).resolve().parents[1] / "flwr_byz" / "strategy"


def _theta():
    from strategy_helpers import model_arrays, to_record

    layout, arrays = decode_arrayrecord(to_record(model_arrays(1)))
    return layout, arrays


def test_step_is_theta_plus_lr_times_aggregate() -> None:
    layout, theta = _theta()
    aggregate = np.arange(layout.d, dtype=np.float32)
    out = server_step(theta=theta, layout=layout, aggregate=aggregate, lr=0.25)
    got = layout.flatten(out.theta)
    np.testing.assert_allclose(got, layout.flatten(theta) + 0.25 * aggregate, rtol=1e-6)
    assert out.buffer is None
    # Integer arrays are the sent ones; the input is not modified.
    assert out.theta["count"] is theta["count"]
    assert not np.shares_memory(out.theta["w"], theta["w"])


def test_momentum_buffer_is_returned_not_stored() -> None:
    layout, theta = _theta()
    a = np.ones(layout.d, dtype=np.float32)
    first = server_step(theta=theta, layout=layout, aggregate=a, lr=0.5, momentum=0.9)
    np.testing.assert_array_equal(first.buffer, a)
    second = server_step(
        theta=first.theta,
        layout=layout,
        aggregate=a,
        lr=0.5,
        momentum=0.9,
        buffer=first.buffer,
    )
    np.testing.assert_allclose(second.buffer, 1.9 * a, rtol=1e-6)
    np.testing.assert_allclose(
        layout.flatten(second.theta),
        layout.flatten(theta) + 0.5 * a + 0.5 * 1.9 * a,
        rtol=1e-6,
    )


def test_non_finite_result_keeps_the_model_and_the_buffer() -> None:
    layout, theta = _theta()
    huge = np.full(layout.d, 3e38, dtype=np.float32)
    old = np.ones(layout.d, dtype=np.float32)
    out = server_step(
        theta=theta, layout=layout, aggregate=huge, lr=10.0, momentum=0.5, buffer=old
    )
    assert out.theta is None and out.buffer is old


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_one_non_finite_value_keeps_the_model(bad) -> None:
    layout, theta = _theta()
    aggregate = np.zeros(layout.d, dtype=np.float32)
    aggregate[layout.d - 1] = bad
    out = server_step(theta=theta, layout=layout, aggregate=aggregate, lr=1.0)
    assert out.theta is None


def test_large_finite_steps_are_taken() -> None:
    # Values near float32's largest square past its range: the new model is
    # still finite, and is returned.
    layout, theta = _theta()
    aggregate = np.full(layout.d, 1e30, dtype=np.float32)
    out = server_step(theta=theta, layout=layout, aggregate=aggregate, lr=1.0)
    assert out.theta is not None
    np.testing.assert_allclose(
        layout.flatten(out.theta), layout.flatten(theta) + aggregate, rtol=1e-6
    )


def test_server_step_is_keyword_only() -> None:
    layout, theta = _theta()
    with pytest.raises(TypeError):
        server_step(theta, layout, np.zeros(layout.d, np.float32), 1.0)  # type: ignore[misc]


def test_legacy_adapter_shares_the_strategy_round_state() -> None:
    from flwr_byz.strategy import Mean
    from flwr_byz.strategy.legacy import LegacyRobust

    inner = Mean(server_momentum=0.5)
    legacy = LegacyRobust(inner)
    assert isinstance(inner.round_state, RoundState)
    assert not hasattr(inner, "_momentum") and not hasattr(inner, "_buffer")
    source = (PACKAGE / "legacy" / "legacy_robust.py").read_text()
    assert "._momentum" not in source and "._buffer" not in source
    assert legacy.strategy.round_state is inner.round_state


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_round_core_does_not_import_the_strategy() -> None:
    for module in ("round_core.py", "reply_validation.py", "server_step.py"):
        imported = _imports(PACKAGE / module)
        assert not any("robust_strategy" in name for name in imported), module
