"""The house: what the wheel installs, where the app's wiring lives, what docstrings
cite (fast)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
_NOT_YET: set[str] = set()


def test_wheel_installs_only_the_library() -> None:
    assert PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == [
        "flwr_byz"
    ]
    assert not list((REPO / "flwr_byz").rglob("bench_*.py"))


def test_flower_components_are_the_app_directory_entry_points() -> None:
    components = PYPROJECT["tool"]["flwr"]["app"]["components"]
    for ref in components.values():
        module, _, attr = ref.partition(":")
        path = REPO / (module.replace(".", "/") + ".py")
        assert path.is_file(), ref
        assert re.search(rf"^{attr} = ", path.read_text(encoding="utf-8"), re.M)


def test_entry_points_use_the_app_package_not_experiments() -> None:
    for entry in ("server", "clients"):
        for path in (REPO / entry).glob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "flwr_byz.experiments" not in text, path


def _sources():
    for path in sorted((REPO / "flwr_byz").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if any(rel == p or rel.startswith(p + "/") for p in _NOT_YET):
            continue
        yield rel, path.read_text(encoding="utf-8")


def test_docstrings_cite_papers_not_internal_files() -> None:
    bad = [
        rel
        for rel, text in _sources()
        if re.search(r"papers/\d|DESIGN(\.md)?\s*§", text)
    ]
    assert bad == []


def test_rules_report_through_their_result_not_a_side_channel() -> None:
    """Rule-specific metrics travel in AggregationResult.metrics: no strategy keeps
    per-round state for a later hook to read."""
    from flwr_byz.strategy import STRATEGIES

    for name, cls in STRATEGIES.items():
        assert not hasattr(cls, "extra_round_metrics"), name
    bad = [
        rel
        for rel, text in _sources()
        if rel.startswith("flwr_byz/strategy/") and re.search(r"self\._last\b", text)
    ]
    assert bad == []
