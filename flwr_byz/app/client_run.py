"""The ClientApp's work, as library calls: a train, evaluate or query message in,
the reply out.

``clients/client_app.py`` registers :func:`train`, :func:`evaluate` and
:func:`query` behind :func:`flwr_byz.attacks.byzantine_mod`: honest nodes reply
exactly what they trained; Byzantine nodes tamper the update (random fault,
uniform noise, sign flip, scaling) or, for the data attacks, train on flipped
labels or on the adaptive-fault objective (read from
:func:`flwr_byz.attacks.active_attack`).

Simulation: the node config carries ``partition-id`` / ``num-partitions`` (Flower
sets them) and the node loads its partition of the run config's ``dataset``.
Deployment: ``flower-supernode --node-config "data-path='/data/site.parquet'"``
makes the node load its own file (``dataset = "files"``, one partition), and
``byzantine=true`` in the same node config turns that node malicious.

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

from flwr_byz.app.client_data import load_adaptive_d0, load_client_data
from flwr_byz.app.config import client_config
from flwr_byz.app.training import (
    adaptive_fault_steps,
    batch_generator,
    sgd_steps,
)
from flwr_byz.app.training import evaluate as evaluate_model
from flwr_byz.attacks import active_attack, is_compromised
from flwr_byz.attacks import label_flip as flip_labels
from flwr_byz.data import ClientData, dataset_shape
from flwr_byz.devices import resolve_device
from flwr_byz.models import build_model


@dataclass
class NodeState:
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
_NODES: dict[tuple, NodeState] = {}
_D0: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
#: At most this many nodes are kept (a simulation actor may serve many partitions).
MAX_CACHED_NODES = 64


def clear_caches() -> None:
    """Forget the nodes (data, model) and attacker QV guesses kept in this process."""
    _NODES.clear()
    _D0.clear()


def _freeze(mapping: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in mapping.items()))


def node_state(context: Context, msg: Message) -> NodeState:
    """This node's data and model, loaded on its first message in this process."""
    key = (_freeze(context.run_config), _freeze(context.node_config))
    node = _NODES.get(key)
    if node is None:
        cfg = client_config(context.run_config)
        data = load_client_data(context.run_config, context.node_config)
        device = resolve_device(str(cfg["device"]))
        num_features = int(data.train.features.shape[1])
        num_classes = _num_classes(context.run_config, data, msg)
        model = build_model(str(cfg["model"]), num_features, num_classes, seed=0)
        node = NodeState(
            data.train.features.to(device),
            data.train.labels.to(device),
            data.test.features.to(device),
            data.test.labels.to(device),
            num_classes,
            model.to(device),
            device,
        )
        if len(_NODES) >= MAX_CACHED_NODES:
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


def _d0(context: Context, node: NodeState) -> tuple[torch.Tensor, torch.Tensor]:
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


def _load_weights(
    node: NodeState, msg: Message, node_config: Mapping[str, Any]
) -> None:
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


def train(msg: Message, context: Context) -> Message:
    """Load the global weights, train locally, reply the new weights."""
    delay = fault_delay(context.node_config)
    if delay:
        time.sleep(delay)  # fault injection: a node that hangs
    cfg = client_config(context.run_config)
    node = node_state(context, msg)
    _load_weights(node, msg, context.node_config)
    partition = int(context.node_config.get("partition-id", context.node_id))
    generator = batch_generator(int(cfg["seed"]), partition, _round(msg))
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


def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received weights on the node's local test split."""
    node = node_state(context, msg)
    _load_weights(node, msg, context.node_config)
    loss, acc = evaluate_model(node.model, node.test_x, node.test_y)
    metrics = MetricRecord(
        {"num-examples": int(node.test_y.shape[0]), "eval-loss": loss, "eval-acc": acc}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


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
