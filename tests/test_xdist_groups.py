"""The suite's `--dist loadgroup` (pyproject.toml) keeps each `xdist_group` on one
worker, so a module's costly fixture (a Ray simulation, a SuperLink) is built once,
not once per worker."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.xdist_group("test_xdist_groups")


def test_a_grouped_test_carries_its_group_to_the_scheduler(request) -> None:
    if not hasattr(request.config, "workerinput"):
        pytest.skip("not under pytest-xdist (pytest -n 0)")
    # LoadGroupScheduling sends tests that share this node-id suffix to one worker.
    assert request.node.nodeid.endswith("@test_xdist_groups"), request.node.nodeid
