"""This repository's ClientApp: node config -> data, model, behaviour -> train/evaluate.

Simulation: the node config carries ``partition-id`` / ``num-partitions`` (Flower
sets them) and the node loads its partition of the run config's ``dataset``.
Deployment: ``flower-supernode --node-config "data-path='/data/site.parquet'"``
makes the node load its own file (``dataset = "files"``, one partition), and
``byzantine=true`` in the same node config turns that node malicious.

Every train message goes through :func:`flwr_byz.attacks.byzantine_mod`: honest nodes
reply exactly what they trained; Byzantine nodes tamper the update (random fault,
uniform noise, sign flip, scaling) or, for the data attacks, train on flipped labels
or on the adaptive-fault objective (read from
:func:`flwr_byz.attacks.active_attack` below).

Fault injection (for liveness tests, never needed in a real run):
``--node-config "sleep-seconds=30"`` makes the node answer every train message 30
seconds late, like a node that hangs; the server's ``round-timeout`` decides how
long a round waits for it. Absent or 0: no delay.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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

from flwr_byz.app.training import adaptive_fault_steps, evaluate, sgd_steps
from flwr_byz.attacks import (
    DEFAULT_LEARNING_RATE,
    active_attack,
    byzantine_mod,
    is_compromised,
)
from flwr_byz.attacks import label_flip as flip_labels
from flwr_byz.data import (
    ClientData,
    LabeledData,
    dataset_shape,
    load_partition,
    load_server_data,
)
from flwr_byz.devices import DEVICES, resolve_device
from flwr_byz.models import MODELS, build_model
from flwr_byz.seeding import torch_stream

# Run-config keys this app reads, with their defaults (the lead wires them into
# pyproject.toml; the data and attack keys have their own defaults).
CLIENT_DEFAULTS: dict[str, Any] = {
    "model": "auto",
    "local-steps": 1,
    "learning-rate": DEFAULT_LEARNING_RATE,
    "batch-size": 0,
    "seed": 0,
    "device": "auto",
}

# How many samples of the QV distribution the adaptive-fault attacker is assumed to
# know (GAA §6.3.1, case A: D0 = the full 1k-sample QV pool, not the server's few).
ADAPTIVE_D0_SIZE = 1000
_TAG_BATCHES = 0x42415443  # "BATC"


def client_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The client-training keys of ``run_config`` over :data:`CLIENT_DEFAULTS`.

    Raises
    ------
    ValueError
        Naming the key, the bad value and the valid values.
    """
    cfg = {k: run_config.get(k, v) for k, v in CLIENT_DEFAULTS.items()}
    if cfg["model"] not in MODELS:
        raise ValueError(
            f"model={cfg['model']!r} is not valid; valid values: {', '.join(MODELS)}"
        )
    for key, low in (("local-steps", 1), ("batch-size", 0), ("seed", 0)):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(
                f"{key}={value!r} is not valid; valid values: integers >= {low}"
            )
    lr = cfg["learning-rate"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(
            f"learning-rate={lr!r} is not valid; valid values: finite floats > 0"
        )
    if cfg["device"] not in DEVICES:
        raise ValueError(
            f"device={cfg['device']!r} is not valid; valid values: {', '.join(DEVICES)}"
        )
    return cfg


def load_client_data(
    run_config: Mapping[str, Any], node_config: Mapping[str, Any]
) -> ClientData:
    """This node's ``ClientData`` (train and local test split).

    Simulation: partition ``partition-id`` of ``num-partitions`` of the run config's
    dataset. Deployment: ``data-path`` in the node config points at the node's own
    file, loaded as the single partition of a ``files`` dataset.
    """
    if "data-path" in node_config:
        cfg = {
            **run_config,
            "dataset": "files",
            "data-path": node_config["data-path"],
            "partitioning": "iid",  # the node's whole file is its one partition
            # The node never builds the server's QV set; any valid source will do.
            "qv-source": "partition:0",
        }
        return load_partition(cfg, 0, 1)
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise ValueError(
            "node config needs partition-id and num-partitions (simulation) or "
            "data-path (deployment); got keys " + ", ".join(sorted(node_config))
        )
    return load_partition(
        run_config, int(node_config["partition-id"]), int(node_config["num-partitions"])
    )


def load_adaptive_d0(run_config: Mapping[str, Any], num_partitions: int) -> LabeledData:
    """The adaptive-fault attacker's guess of the QV set (GAA §6.3.1, case A).

    ``ADAPTIVE_D0_SIZE`` samples of the QV set's distribution (the paper's full 1k
    QV pool); when the source holds fewer, the server's own QV set (the worst case
    of a leaked QV set).
    """
    num = max(num_partitions, 1)
    try:
        return load_server_data({**run_config, "qv-size": ADAPTIVE_D0_SIZE}, num).qv
    except ValueError:
        return load_server_data(run_config, num).qv


@dataclass
class _Node:
    """What a node keeps between rounds in one process: its data and model."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    model: torch.nn.Module
    device: torch.device


# One entry per (config, node) in this process: Ray actors and SuperNode processes
# serve many rounds (and, in simulation, many partitions) without reloading.
_NODES: dict[tuple, _Node] = {}
_D0: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _freeze(mapping: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in mapping.items()))


def _node(context: Context, msg: Message) -> _Node:
    key = (_freeze(context.run_config), _freeze(context.node_config))
    node = _NODES.get(key)
    if node is None:
        cfg = client_config(context.run_config)
        data = load_client_data(context.run_config, context.node_config)
        device = resolve_device(str(cfg["device"]))
        num_features = int(data.train.features.shape[1])
        num_classes = _num_classes(context.run_config, data, msg)
        model = build_model(str(cfg["model"]), num_features, num_classes, seed=0)
        node = _Node(
            data.train.features.to(device),
            data.train.labels.to(device),
            data.test.features.to(device),
            data.test.labels.to(device),
            num_classes,
            model.to(device),
            device,
        )
        if len(_NODES) >= 64:  # a simulation actor may serve many partitions
            _NODES.pop(next(iter(_NODES)))
        _NODES[key] = node
    return node


def _num_classes(run_config: Mapping[str, Any], data: ClientData, msg: Message) -> int:
    # The server knows the model it sent; a remote node cannot read the server's
    # data files, and its own labels may miss a class.
    for record in msg.content.config_records.values():
        if "num-classes" in record:
            return int(record["num-classes"])  # type: ignore[arg-type]
    try:
        return int(dataset_shape(run_config)[1])
    except (ValueError, KeyError, OSError):
        labels = torch.cat([data.train.labels, data.test.labels])
        return int(labels.max()) + 1 if labels.numel() else 2


def _d0(context: Context, node: _Node) -> tuple[torch.Tensor, torch.Tensor]:
    num = int(context.node_config.get("num-partitions", 1))
    key = (_freeze(context.run_config), num)
    if key not in _D0:
        qv = load_adaptive_d0(context.run_config, num)
        _D0[key] = (qv.features, qv.labels)
    x, y = _D0[key]
    return x.to(node.device), y.to(node.device)


def _round(msg: Message) -> int:
    for record in msg.content.config_records.values():
        if "server-round" in record:
            return int(record["server-round"])  # type: ignore[arg-type]
    return 0


def _generator(seed: int, context: Context, server_round: int) -> torch.Generator:
    pid = int(context.node_config.get("partition-id", context.node_id))
    return torch_stream(seed, pid, server_round, _TAG_BATCHES)


def _load_weights(node: _Node, msg: Message, node_config: Mapping[str, Any]) -> None:
    record = next(iter(msg.content.array_records.values()))
    state = record.to_torch_state_dict()
    own = node.model.state_dict()
    for key, value in state.items():
        if key in own and tuple(value.shape) != tuple(own[key].shape):
            where = (
                f"node config 'data-path' = {node_config['data-path']!r}"
                if "data-path" in node_config
                else "this node's partition"
            )
            raise ValueError(
                f"{where} has {node.train_x.shape[1]} features, but the server's "
                f"model takes other inputs: its {key!r} has shape "
                f"{tuple(value.shape)}, a model for this node's data "
                f"{tuple(own[key].shape)}; give this node data with the same "
                "feature columns as the federation's"
            )
    node.model.load_state_dict(state, strict=True)


def fault_delay(node_config: Mapping[str, Any]) -> float:
    """Seconds the node's ``sleep-seconds`` fault-injection knob delays each train
    reply (0 without it).

    Raises
    ------
    ValueError
        When the value is not a finite number >= 0.
    """
    value = node_config.get("sleep-seconds", 0)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            f"node config sleep-seconds={value!r} is not valid; valid values: "
            "finite numbers >= 0"
        )
    return float(value)


# Honest unless the run config's attack keys (pyproject.toml) say otherwise.
app = ClientApp(mods=[byzantine_mod(attack="none")])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global weights, train locally, reply the new weights."""
    delay = fault_delay(context.node_config)
    if delay:
        time.sleep(delay)  # fault injection: a node that hangs
    cfg = client_config(context.run_config)
    node = _node(context, msg)
    _load_weights(node, msg, context.node_config)
    generator = _generator(int(cfg["seed"]), context, _round(msg))
    steps, lr, batch = (
        int(cfg["local-steps"]),
        float(cfg["learning-rate"]),
        int(cfg["batch-size"]),
    )
    labels = node.train_y
    started = time.perf_counter()
    attack = active_attack()
    if attack is not None and attack.name == "adaptive-fault":
        loss = adaptive_fault_steps(
            node.model,
            _d0(context, node),
            (node.train_x, labels),
            float(attack.config["adaptive-alpha"]),
            steps,
            lr,
            batch,
            generator,
        )
        attack.claim()
    else:
        if attack is not None and attack.name == "label-flip":
            labels = flip_labels(labels, node.num_classes)
            attack.claim()
        loss = sgd_steps(node.model, node.train_x, labels, steps, lr, batch, generator)
    state = {k: v.detach().cpu() for k, v in node.model.state_dict().items()}
    content = RecordDict(
        {
            "arrays": ArrayRecord(state),
            "metrics": MetricRecord(
                {
                    "num-examples": int(node.train_y.shape[0]),
                    "train-loss": loss,
                    # The node's own training, to tell it from the engine's time.
                    "train-time-s": time.perf_counter() - started,
                }
            ),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the received weights on the node's local test split."""
    node = _node(context, msg)
    _load_weights(node, msg, context.node_config)
    loss, acc = evaluate(node.model, node.test_x, node.test_y)
    metrics = MetricRecord(
        {"num-examples": int(node.test_y.shape[0]), "eval-loss": loss, "eval-acc": acc}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (experiment bookkeeping)."""
    identity: dict[str, int] = {
        "partition-id": int(context.node_config.get("partition-id", -1))
    }
    if "num-partitions" in context.node_config:
        identity["num-partitions"] = int(context.node_config["num-partitions"])
    if "byzantine" in context.node_config:
        # A deployment's explicit switch is the ground truth the harness records.
        identity["byzantine"] = int(is_compromised(context))
    return Message(RecordDict({"identity": ConfigRecord(identity)}), reply_to=msg)
