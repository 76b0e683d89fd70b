"""Shared pytest configuration: device parametrisation, process hygiene, and one
torch thread for the data modules."""

from __future__ import annotations

import os

import pytest
import torch

# Ray and Flower read these at import time; keep test runs quiet and local.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (``pytest.mark.usefixtures``).

    Tiny matrices on shared cores: extra threads only add contention.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def superlink():
    """A real local SuperLink for a module's ``flwr-byz run`` tests."""
    from flwr_byz.deploy.local_superlink import LocalSuperLink

    with LocalSuperLink() as link:
        yield link


@pytest.fixture
def no_process_left():
    """Fail a test that leaves a process of :func:`spawn` running, and end those
    processes even when the test's own clean-up was cut short (its time limit
    fired inside ``stop()``), so that nothing outlives the test."""
    from flwr_byz.deploy.processes import kill_spawned, spawned

    before = spawned()
    yield
    left = kill_spawned(spawned() - before)
    assert not left, f"processes left running (now killed): {sorted(left)}"
