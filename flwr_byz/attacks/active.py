"""The attack a Byzantine node runs in its data path (label flip, adaptive fault).

:func:`~flwr_byz.attacks.byzantine_mod` cannot poison data it never sees. For those
attacks it publishes an :class:`ActiveAttack` for the duration of the wrapped train
call; the app's training code reads it with :func:`active_attack` and calls
:meth:`ActiveAttack.claim` once it has applied it. An unclaimed data attack is
reported as an error reply (the app does not support it), never silently dropped.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

_ACTIVE: ContextVar[ActiveAttack | None] = ContextVar(
    "flwr_byz_active_attack", default=None
)


@dataclass
class ActiveAttack:
    """A data-path attack the node must apply in this train call.

    Attributes
    ----------
    name : str
        ``"label-flip"`` or ``"adaptive-fault"``.
    server_round : int
        The round being trained.
    node : int
        The node's key (partition id in simulation, node id otherwise).
    config : dict
        The run config merged over ``ATTACK_DEFAULTS`` (attack parameters, seed).
    """

    name: str
    server_round: int
    node: int
    config: dict[str, Any] = field(default_factory=dict)
    claimed: bool = False

    def claim(self) -> None:
        """Tell the mod that the app applied this attack."""
        self.claimed = True


def active_attack() -> ActiveAttack | None:
    """The data-path attack to apply in the current train call, or ``None``."""
    return _ACTIVE.get()
