"""End to end in Flower's simulation engine with this app's ClientApp.

10 clients on the generated Yelp-style data, FedSGD (one full-batch step per round),
3 of them with a static random fault (DESIGN.md §6): FedAvg's accuracy collapses,
FABA stays with the no-attack run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from message_helpers import run_config_mod

# One worker runs this module under pytest-xdist: its module fixture is costly.
pytestmark = pytest.mark.xdist_group("test_client_app_e2e")

NUM_CLIENTS = 10
ROUNDS = 20
BASE = {"dataset": "yelp-style", "seed": 0, "learning-rate": 0.5}
ATTACK = {"attack": "random-fault", "byzantine-fraction": 0.3}
FINAL: dict[str, float] = {}


def _app_with_run_config(run_config: dict[str, Any]) -> ClientApp:
    """This repo's ClientApp, called with ``run_config`` as `flwr run` would set it.

    ``run_simulation`` hands ClientApps an empty, read-only run config; this wrapper
    passes the real app (and its byzantine_mod) a context carrying the experiment's.
    """
    from clients.client_app import app as real_app

    wrapper = ClientApp(mods=[run_config_mod(run_config)])

    @wrapper.train()
    def train(msg: Message, context: Context) -> Message:
        return real_app(msg, context)

    @wrapper.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return real_app(msg, context)

    return wrapper


def _run(name: str, strategy_factory: Callable[[], Any], run_config: dict) -> float:
    import torch
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation
    from torch.nn import functional as F

    from flwr_byz.data import dataset_shape, load_server_data
    from flwr_byz.models import build_model

    # Built here, before the simulation starts its threads and processes.
    num_features, num_classes = dataset_shape(run_config)
    test = load_server_data(run_config, NUM_CLIENTS).test
    model = build_model("auto", num_features, num_classes, seed=0)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            with torch.no_grad():
                logits = model(test.features)
            acc = float((logits.argmax(1) == test.labels).float().mean())
            loss = float(F.cross_entropy(logits, test.labels))
            return MetricRecord({"accuracy": acc, "loss": loss})

        result = strategy_factory().start(
            grid,
            ArrayRecord(model.state_dict()),
            num_rounds=ROUNDS,
            evaluate_fn=evaluate_fn,
        )
        FINAL[name] = float(result.evaluate_metrics_serverapp[ROUNDS]["accuracy"])

    run_simulation(
        server,
        _app_with_run_config(run_config),
        num_supernodes=NUM_CLIENTS,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    return FINAL[name]


@pytest.fixture(scope="module")
def accuracies() -> dict[str, float]:
    from flwr.serverapp.strategy import FedAvg

    from flwr_byz.strategy import FABA

    def fedavg() -> FedAvg:
        return FedAvg(
            fraction_evaluate=0.0,
            min_train_nodes=NUM_CLIENTS,
            min_available_nodes=NUM_CLIENTS,
        )

    def faba() -> FABA:
        return FABA(
            fraction_evaluate=0.0,
            min_train_nodes=NUM_CLIENTS,
            min_available_nodes=NUM_CLIENTS,
            num_malicious_nodes=3,
        )

    accuracy = {
        "no-attack": _run("no-attack", fedavg, BASE),
        "fedavg": _run("fedavg", fedavg, {**BASE, **ATTACK}),
        "faba": _run("faba", faba, {**BASE, **ATTACK}),
    }
    print(f"final server-side test accuracy after {ROUNDS} rounds: {accuracy}")
    return accuracy


@pytest.mark.slow
def test_random_fault_destroys_fedavg(accuracies: dict[str, float]) -> None:
    assert accuracies["no-attack"] >= 0.7, accuracies
    assert accuracies["fedavg"] <= accuracies["no-attack"] - 0.20, accuracies


@pytest.mark.slow
def test_faba_stays_with_the_no_attack_run(accuracies: dict[str, float]) -> None:
    assert abs(accuracies["faba"] - accuracies["no-attack"]) <= 0.02, accuracies
