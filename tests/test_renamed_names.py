"""Renamed names keep working for one release, with a warning naming the new one."""

from __future__ import annotations

import pytest
import strategy_helpers as sh
import torch

from flwr_byz.app.config import RunConfigError, check_run_config
from flwr_byz.gaa import GAAAgent, QVObjective
from flwr_byz.strategy import GAA, FLTrust


def test_the_old_window_key_warns_and_becomes_gaa_window() -> None:
    with pytest.warns(DeprecationWarning, match="'gaa-episode-length' is deprecated"):
        cfg = check_run_config({"gaa-episode-length": 3})
    assert (cfg["gaa-window"], cfg["gaa-episode-length"]) == (3, 0)
    assert check_run_config({"gaa-window": 4})["gaa-window"] == 4
    with pytest.raises(RunConfigError, match=r"disagree.*set only 'gaa-window'"):
        check_run_config({"gaa-episode-length": 3, "gaa-window": 4})


def test_the_old_window_argument_warns_and_sets_the_window() -> None:
    qv = sh.linear43_data(3, 10)
    with pytest.warns(DeprecationWarning, match="'episode_length' is deprecated"):
        strategy = GAA(model_factory=sh.Linear43, qv_set=qv, episode_length=2)
    assert strategy.agent.window == 2
    objective = QVObjective(sh.Linear43, qv)
    with pytest.warns(DeprecationWarning, match="use 'window'"):
        assert GAAAgent(objective, episode_length=3).window == 3
    assert GAA(model_factory=sh.Linear43, qv_set=qv, window=4).agent.window == 4


def test_fltrust_takes_its_root_set_by_its_name_and_the_old_one_warns() -> None:
    root = sh.linear43_data(3, 10)
    strategy = FLTrust(model_factory=sh.Linear43, root_set=root)
    with pytest.warns(
        DeprecationWarning, match="'qv_set' is deprecated; use 'root_set'"
    ):
        old = FLTrust(model_factory=sh.Linear43, qv_set=root)
    assert torch.equal(old.worker.objective.x, strategy.worker.objective.x)
    with pytest.raises(ValueError, match="root_set is required"):
        FLTrust(model_factory=sh.Linear43)
