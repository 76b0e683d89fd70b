"""Shared pieces of the tests that run Flower's simulation engine.

:func:`client_app` and :func:`simulate` are the harness (a ClientApp that
answers :func:`node_partitions.identify`, one ServerApp run on ``num_nodes``
simulated SuperNodes that first asks each node for its partition); :func:`start`
runs one strategy on the grid.
:func:`model`, :func:`region`, :func:`region_gradient` and :func:`accuracy` are
the small generated task of the GAA and FLTrust/Zeno runs: regions with a
covariate shift, labels from one shared linear task, an MLP 32-10-2 (sigmoid
hidden) trained by one full-batch SGD step per round.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from node_partitions import identify, partition_of_nodes
from torch import nn

F_IN, HIDDEN, LR = 32, 10, 1.0


def client_app() -> ClientApp:
    """A ClientApp whose query handler tells the server its partition."""
    app = ClientApp()
    app.query()(identify)
    return app


def train_reply(msg: Message, arrays: ArrayRecord, metrics: Mapping) -> Message:
    """The reply of a train handler: its arrays and metrics."""
    return Message(
        RecordDict({"arrays": arrays, "metrics": MetricRecord(dict(metrics))}),
        reply_to=msg,
    )


def simulate(
    client: ClientApp, num_nodes: int, runs: Callable[[Grid, dict], None]
) -> dict:
    """Run ``runs(grid, seen)`` as a ServerApp against ``num_nodes`` simulated
    ``client`` nodes; returns ``seen``, which also maps ``"partition"`` to each
    node's partition (node id -> partition id)."""
    seen: dict = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        seen["partition"] = partition_of_nodes(grid, num_nodes)
        runs(grid, seen)

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=num_nodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2},
        },
    )
    return seen


def start(strategy, grid: Grid, initial: ArrayRecord, num_rounds: int, config):
    """``strategy.start`` for ``num_rounds`` with ``config`` as the train config."""
    return strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=num_rounds,
        train_config=ConfigRecord(config),
    )


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(F_IN, HIDDEN), nn.Sigmoid(), nn.Linear(HIDDEN, 2))


def initial_model() -> ArrayRecord:
    """The model every run of a test starts from (drawn with torch seed 0)."""
    torch.manual_seed(0)
    return ArrayRecord(model().state_dict())


@functools.cache
def region(k: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of region k: shifted covariates, labels from the shared task."""
    w = torch.randn(F_IN, 2, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(1000 + k)
    shift = 0.5 * torch.randn(F_IN, generator=g)
    x = torch.randn(m, F_IN, generator=g) + shift
    y = ((x - shift) @ w + 0.8 * torch.randn(m, 2, generator=g)).argmax(1)
    return x, y


def region_gradient(msg: Message, pid: int) -> tuple[nn.Module, dict]:
    """The received model with its gradient on region ``pid``'s 200 training
    samples, and the metrics of that step (num-examples, train-loss)."""
    net = model()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = region(pid, 200)
    loss = nn.functional.cross_entropy(net(x), y)
    net.zero_grad()
    loss.backward()
    return net, {"num-examples": len(y), "train-loss": float(loss)}


def accuracy(arrays: ArrayRecord) -> float:
    """Accuracy of ``arrays`` on 2000 samples of region 101, which no node holds."""
    x, y = region(101, 2000)
    net = model()
    net.load_state_dict(arrays.to_torch_state_dict())
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())
