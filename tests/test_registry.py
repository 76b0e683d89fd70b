"""One rule registry: strategies, bounds, the app, the grid and the docs' rule table
derive from it; a new rule is one function and one entry (fast)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from strategy_helpers import instructions, model_arrays, reply, server_identity, shifted

from flwr_byz.aggregation import AggregationResult, min_nodes
from flwr_byz.aggregation import registry as reg
from flwr_byz.aggregation.round_input import RoundInput
from flwr_byz.app.config import STRATEGY_NAMES, check_run_config
from flwr_byz.strategy import STRATEGIES, RobustStrategy, strategy_for
from flwr_byz.validation import number

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_docs_rule_table_is_generated_from_the_registry() -> None:
    """docs/strategies.md holds the marker that the site's hook (docs/hooks.py)
    replaces with the registry's table; the built page is checked by test_docs."""
    import importlib.util

    text = (DOCS / "strategies.md").read_text(encoding="utf-8")
    assert text.count("<!-- rules-table -->") == 1
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    table = reg.rules_table
    page = hooks.on_page_markdown(text)
    assert table() in page and "<!-- rules-table -->" not in page
    for rule in reg.REGISTRY:
        assert f"| `{rule.name}` |" in page, rule.name


def test_everything_lists_the_registry() -> None:
    names = [rule.name for rule in reg.REGISTRY]
    assert set(STRATEGIES) - {"gaa"} == set(names)
    assert set(STRATEGY_NAMES) == {"gaa", "fedavg", *names}
    for rule in reg.REGISTRY:
        cls = STRATEGIES[rule.name]
        assert cls.rule_name == rule.name
        for f in range(4):
            assert min_nodes(rule.name, f) == rule.bound(f)
        check_run_config({"strategy": rule.name})


def test_flags_come_from_the_registry() -> None:
    for rule in reg.REGISTRY:
        cls = STRATEGIES[rule.name]
        if "uses_f" not in vars(cls):
            assert cls.uses_f == rule.uses_f
        if "supports_weights" not in vars(cls):
            assert cls.supports_weights == rule.supports_weights


def _largest_norm_dropped(
    ri: RoundInput, *, sketch: object = None, shrink: float = 1.0
) -> AggregationResult:
    """A toy rule: drop the f rows of largest norm, average the rest, scale it."""
    x, f = ri.updates, ri.f
    order = torch.argsort(torch.linalg.vector_norm(x, dim=1)).tolist()
    keep, drop = sorted(order[: x.shape[0] - f]), order[x.shape[0] - f :][::-1]
    return AggregationResult(shrink * x[keep].mean(dim=0), tuple(keep), tuple(drop))


TOY = reg.Rule(
    "toy-norm",
    "2f+1",
    _largest_norm_dropped,
    _largest_norm_dropped,
    uses_f=True,
    params=(reg.Param("shrink", 1.0, number(0.0, 1.0), "factor on the mean"),),
    description="drop the f largest norms",
)


def test_a_new_rule_is_one_function_and_one_entry(monkeypatch) -> None:
    monkeypatch.setitem(reg.RULE_BY_NAME, TOY.name, TOY)
    cls = strategy_for(TOY)
    assert issubclass(cls, RobustStrategy) and cls.__name__ == "ToyNorm"
    assert cls.uses_f and not cls.supports_weights
    with pytest.raises(ValueError, match="Byzantine budget"):
        cls()
    with pytest.raises(ValueError, match=r"shrink=2: allowed values are a number"):
        cls(num_malicious_nodes=1, shrink=2)
    with server_identity():
        strategy = cls(num_malicious_nodes=1, shrink=0.5)
        theta = model_arrays(2)
        msgs = instructions(strategy, 1, theta, [1, 2, 3, 4])
        steps = {1: 0.1, 2: 0.1, 3: 0.1, 4: 50.0}
        replies = [
            reply(m, shifted(theta, steps[m.metadata.dst_node_id]), {"num-examples": 1})
            for m in msgs
        ]
        arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["removed-node-ids"] == [4]
    assert metrics["min-nodes"] == 3
    np.testing.assert_allclose(arrays["b"].numpy(), theta["b"] + 0.05, rtol=1e-6)


def test_a_rule_parameter_gets_its_run_config_key(monkeypatch) -> None:
    from flwr_byz.app import config, strategy_factory

    monkeypatch.setattr(config, "REGISTRY", (*reg.REGISTRY, TOY))
    key = config._rule_parameter_keys()["toy-norm-shrink"]
    assert key.default == 1.0 and key.check(2) is not None and key.check(0.5) is None
    monkeypatch.setitem(reg.RULE_BY_NAME, TOY.name, TOY)
    monkeypatch.setitem(STRATEGIES, TOY.name, strategy_for(TOY))
    cfg = {**config.with_defaults({}), "strategy": "toy-norm", "toy-norm-shrink": 0.25}
    strategy = strategy_factory.build_strategy(cfg, 10, None, None, "cpu")  # type: ignore[arg-type]
    assert strategy.rule_params == {"shrink": 0.25}
    assert strategy.malicious_fraction == 0.3


def test_the_app_builds_every_plain_rule_from_the_registry() -> None:
    from flwr_byz.app.config import with_defaults
    from flwr_byz.app.strategy_factory import build_strategy

    for rule in reg.REGISTRY:
        if rule.name in ("fltrust", "zeno"):  # need the server's data
            continue
        cfg = with_defaults({"strategy": rule.name})
        strategy = build_strategy(cfg, 10, None, None, "cpu")  # type: ignore[arg-type]
        assert type(strategy) is STRATEGIES[rule.name]
        expected = 0.3 if rule.uses_f else None
        assert strategy.malicious_fraction == expected, rule.name


def test_the_docs_strategy_key_names_the_peers_and_points_to_the_rule_table() -> None:
    row = next(
        line
        for line in (DOCS / "configuration.md").read_text(encoding="utf-8").splitlines()
        if line.startswith('| `strategy` | `"gaa"` |')
    )
    # GAA and FedAvg by hand; every rule through the generated rule table.
    assert {"gaa", "fedavg"} <= set(re.findall(r"`([a-z-]+)`", row))
    assert "(strategies.md#rules)" in row
    assert set(STRATEGY_NAMES) == {"gaa", "fedavg", *reg.RULE_BY_NAME}
