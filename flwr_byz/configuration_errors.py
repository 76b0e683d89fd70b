"""A ClientApp's configuration error, as its error replies carry it to the server.

``byzantine_mod`` raises (or replies with) an error whose text contains
:data:`CONFIGURATION_ERROR` when it cannot run as configured, on every node alike.
A training round in which every reply is such an error can never aggregate: the
strategies stop the run there (:func:`stop_on_configuration_errors`) instead of
playing every round with the model frozen.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Message

#: In the text of every configuration error of the mod (the exception it raises on a
#: node, and the reason of the error replies it sends).
CONFIGURATION_ERROR = "byzantine_mod configuration error"


class ClientConfigurationError(RuntimeError):
    """Every reply of a training round is a client's configuration error (e.g.
    ``byzantine_mod`` without an attack): no round could ever aggregate."""


def is_configuration_error(reply: Message) -> bool:
    """Whether ``reply`` is an error reply carrying the mod's configuration error
    (raised on the node and reported by Flower, or sent by the mod itself)."""
    try:
        return reply.has_error() and CONFIGURATION_ERROR in str(reply.error.reason)
    except Exception:  # pylint: disable=broad-except
        return False


def configuration_error_text(reply: Message) -> str:
    """The mod's own words in a configuration error reply (without what Flower or
    Ray wrapped around them), or ``""``."""
    if not is_configuration_error(reply):
        return ""
    reason = str(reply.error.reason)
    line = reason[reason.index(CONFIGURATION_ERROR) :].splitlines()[0]
    return line.removesuffix("'>").strip()


def stop_on_configuration_errors(server_round: int, replies: Sequence[Message]) -> None:
    """Raise :class:`ClientConfigurationError` when every reply of the round is the
    mod's configuration error (a round without replies is a liveness matter)."""
    if not replies or not all(is_configuration_error(r) for r in replies):
        return
    raise ClientConfigurationError(
        f"round {server_round}: every reply ({len(replies)}) is a ClientApp "
        "configuration error, so no round can aggregate; fix the ClientApp. The "
        f"first: {configuration_error_text(replies[0])}"
    )
