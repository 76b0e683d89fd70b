"""Builders of real Flower messages for the strategy tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from flwr_byz.aggregation.result import AggregationResult
from flwr_byz.aggregation.round_input import RoundInput
from flwr_byz.strategy import RobustStrategy

SHAPES = {"w": (4, 3), "b": (3,), "count": ()}


def model_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A small model: two float arrays and an integer counter."""
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(size=(4, 3)).astype(np.float32),
        "b": rng.normal(size=(3,)).astype(np.float32),
        "count": np.array(7, dtype=np.int64),
    }


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """ArrayRecord of numpy arrays, key order kept."""
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def flat(
    arrays: Mapping[str, np.ndarray], keys: Iterable[str] = ("w", "b")
) -> np.ndarray:
    """Float arrays concatenated in key order (float64 for exact comparisons)."""
    return np.concatenate([np.asarray(arrays[k], np.float64).ravel() for k in keys])


def record_flat(record: ArrayRecord, keys: Iterable[str] = ("w", "b")) -> np.ndarray:
    """Flat float64 vector of an ArrayRecord's float arrays."""
    return flat({k: record[k].numpy() for k in keys}, keys)


@contextlib.contextmanager
def server_identity(run_id: int = 1, node_id: int = 0, task_id: int = 0):
    """Set the task identity a ServerApp process has (Message() reads it)."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = (
        run_id,
        node_id,
        task_id,
    )
    try:
        yield
    finally:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = saved


class StaticGrid(Grid):
    """A Grid that only knows its node ids (for calling configure_train directly)."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self._node_ids = list(node_ids)

    def set_run(self, run_id: int) -> None:  # pragma: no cover - unused
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover - unused
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover - unused
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def push_messages(self, messages):  # pragma: no cover - unused
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover - unused
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover
        raise NotImplementedError


def instructions(
    strategy: RobustStrategy,
    server_round: int,
    arrays: Mapping[str, np.ndarray],
    node_ids: Iterable[int],
) -> list[Message]:
    """Run the strategy's own configure_train on a grid of ``node_ids``."""
    return list(
        strategy.configure_train(
            server_round, to_record(arrays), ConfigRecord(), StaticGrid(node_ids)
        )
    )


def reply(
    instruction: Message,
    arrays: ArrayRecord | Mapping[str, np.ndarray] | None,
    metrics: Mapping | None = None,
    *,
    extra: Mapping | None = None,
) -> Message:
    """A real reply Message to ``instruction`` with the given records."""
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = (
            arrays if isinstance(arrays, ArrayRecord) else to_record(arrays)
        )
    if metrics is not None:
        content["metrics"] = MetricRecord(dict(metrics))
    for key, value in (extra or {}).items():
        content[key] = value
    return Message(content, reply_to=instruction)


def error_reply(instruction: Message) -> Message:
    """A reply that carries an error."""
    return Message(Error(code=0, reason="boom"), reply_to=instruction)


def shifted(
    arrays: Mapping[str, np.ndarray], delta: float | np.ndarray
) -> dict[str, np.ndarray]:
    """Model with every float array shifted by ``delta`` (scalar or flat vector)."""
    out, offset = {}, 0
    for key, value in arrays.items():
        if value.dtype.kind == "f":
            if np.ndim(delta) == 0:
                out[key] = (value + delta).astype(value.dtype)
            else:
                size = value.size
                out[key] = (
                    value
                    + np.asarray(delta[offset : offset + size]).reshape(value.shape)
                ).astype(value.dtype)
                offset += size
        else:
            out[key] = value.copy()
    return out


class Linear43(torch.nn.Module):
    """A torch model whose state_dict matches :func:`model_arrays`: w, b, count."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4, 3))
        self.b = torch.nn.Parameter(torch.zeros(3))
        self.register_buffer("count", torch.tensor(7, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.b


def linear43_data(seed: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` samples of :class:`Linear43`'s task (label = argmax of 3 inputs)."""
    x = torch.randn(m, 4, generator=torch.Generator().manual_seed(seed))
    return x, x[:, :3].argmax(1)


class LocalMean(RobustStrategy):
    """The base class with a local torch mean (independent of the rules package)."""

    def min_nodes(self, f: int) -> int:
        return 2 * f + 1

    def aggregate_updates(self, round_input: RoundInput) -> AggregationResult:
        updates, weights = round_input.updates, round_input.weights
        node_ids, f, global_flat = (
            round_input.node_ids,
            round_input.f,
            round_input.global_flat,
        )
        self.seen = (
            updates.clone(),
            list(node_ids),
            None if weights is None else weights.clone(),
            f,
            global_flat.clone(),
        )
        if weights is None:
            agg = updates.mean(dim=0)
        else:
            agg = (weights[:, None] * updates).sum(0) / weights.sum()
        n = updates.shape[0]
        return AggregationResult(agg, tuple(range(n)), (), (), tuple([1.0 / n] * n))


__all__ = [
    "SHAPES",
    "Linear43",
    "LocalMean",
    "StaticGrid",
    "error_reply",
    "flat",
    "instructions",
    "linear43_data",
    "model_arrays",
    "record_flat",
    "reply",
    "server_identity",
    "shifted",
    "to_record",
]
