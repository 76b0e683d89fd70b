"""Messages and contexts as a node's handlers receive them, for calling a ClientApp
(or its handlers) directly: real Message, Metadata and Context objects."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from flwr.app import Context, Message, MessageType, Metadata, RecordDict


def metadata(
    message_type: str = MessageType.TRAIN,
    *,
    src_node_id: int = 0,
    dst_node_id: int = 11,
    message_id: str = "x",
    group_id: str = "",
    reply_to_message_id: str = "",
    ttl: float = 3600.0,
) -> Metadata:
    """Metadata of a message of run 1, created now."""
    return Metadata(
        run_id=1,
        message_id=message_id,
        src_node_id=src_node_id,
        dst_node_id=dst_node_id,
        reply_to_message_id=reply_to_message_id,
        group_id=group_id,
        created_at=time.time(),
        ttl=ttl,
        message_type=message_type,
    )


def delivered(
    content: RecordDict, message_type: str = MessageType.TRAIN, **kwargs
) -> Message:
    """``content`` as delivered to a node (``kwargs``: :func:`metadata`'s)."""
    return Message(content=content, metadata=metadata(message_type, **kwargs))


def node_context(node_config: dict, run_config: dict, node_id: int = 11) -> Context:
    """A node's Context in run 1 with an empty state."""
    return Context(
        run_id=1,
        node_id=node_id,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config,
    )


def run_config_mod(run_config: Mapping) -> Callable:
    """A ClientApp mod that hands the app ``run_config`` over the context's own.

    ``run_simulation`` gives ClientApps an empty run config (``flwr run`` fills it
    from pyproject.toml) that may not be modified: the mod passes the app a new
    context that carries the experiment's run config instead.
    """

    def mod(msg: Message, context: Context, call_next: Callable) -> Message:
        configured = Context(
            run_id=context.run_id,
            node_id=context.node_id,
            node_config=context.node_config,
            state=context.state,
            run_config={**context.run_config, **run_config},
        )
        return call_next(msg, configured)

    return mod


__all__ = ["delivered", "metadata", "node_context", "run_config_mod"]
