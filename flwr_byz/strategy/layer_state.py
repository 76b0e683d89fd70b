"""The state a strategy layer carries from one round to the next.

Every flwr-byz strategy and strategy wrapper has, in PyTorch's style,

* ``state_dict()``: a plain ``dict`` of tensors and Python values (what a
  checkpoint stores; ``torch.load(weights_only=True)`` reads it back), and
* ``load_state_dict(state, node_ids=None)``: sets that state on a layer built with
  the same arguments. ``node_ids`` maps old node ids to new ones (a resumed
  simulation draws node ids afresh); every node id in the state goes through it,
  ids it does not name stay as they are.

A wrapper keeps the state of the strategy it wraps under the key ``"strategy"``,
written by :func:`tagged_state` (the layer's class name with its state) and read
by :func:`load_tagged_state`, which refuses the state of another class by name.
Each layer reads and writes only its own fields.

Flower's own strategies (``FedAvg``) carry nothing from one round to the next:
their state is ``{}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Old node id → new node id (``None``: ids unchanged).
NodeIdMap = Mapping[int, int] | None


class StateMismatchError(ValueError):
    """A saved state that belongs to another strategy class."""


def class_name(obj: object) -> str:
    """``module.QualifiedName`` of ``obj``'s class."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def map_node_id(node_id: Any, node_ids: NodeIdMap) -> Any:
    """``node_id`` through ``node_ids`` (non-integers and unknown ids unchanged)."""
    if node_ids is None or isinstance(node_id, bool) or not isinstance(node_id, int):
        return node_id
    return node_ids.get(node_id, node_id)


def _has_state(strategy: object) -> bool:
    # Looked up on the class: a wrapper's __getattr__ would answer with the
    # wrapped strategy's method.
    return callable(getattr(type(strategy), "state_dict", None)) and callable(
        getattr(type(strategy), "load_state_dict", None)
    )


def tagged_state(strategy: object) -> dict[str, Any]:
    """``{"class": <class name>, "state": strategy.state_dict()}`` (state ``{}``
    for a strategy without ``state_dict``)."""
    state = strategy.state_dict() if _has_state(strategy) else {}  # type: ignore[attr-defined]
    return {"class": class_name(strategy), "state": state}


def load_tagged_state(
    strategy: object, saved: Mapping[str, Any], node_ids: NodeIdMap = None
) -> None:
    """Load :func:`tagged_state` output into ``strategy``.

    Raises
    ------
    StateMismatchError
        When ``saved`` is not a tagged state, or the state of another class.
    """
    if not isinstance(saved, Mapping) or not isinstance(saved.get("state"), Mapping):
        raise StateMismatchError(
            f"expected a tagged strategy state ({{'class', 'state'}}), got "
            f"{type(saved).__name__}"
        )
    if saved.get("class") != class_name(strategy):
        raise StateMismatchError(
            f"the state of strategy {saved.get('class')} cannot be loaded into "
            f"{class_name(strategy)}"
        )
    if _has_state(strategy):
        strategy.load_state_dict(dict(saved["state"]), node_ids)  # type: ignore[attr-defined]
    elif saved["state"]:
        raise StateMismatchError(
            f"{class_name(strategy)} has no load_state_dict, but its saved state "
            f"holds {sorted(saved['state'])}"
        )
