"""``byzantine_mod``: a Flower client mod that makes any ClientApp malicious."""

from __future__ import annotations

from collections.abc import Mapping
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from ._flat import ArrayMismatchError, as_numpy, check_same_layout, flat_update
from ._flat import apply_update as _apply_update
from ._flat import float_keys as _float_keys
from .active import _ACTIVE, ActiveAttack
from .behaviour import attack_generator, tamper_update
from .config import (
    DATA_ATTACKS,
    DEFAULT_LEARNING_RATE,
    byzantine_partitions,
    check_attack_config,
    merged,
    resolve_side,
    role_for,
)

_STATE_KEY = "flwr-byz-mod"
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(
        f"node config byzantine={value!r} is not valid; valid values: true, false"
    )


def node_key(context: Context) -> int:
    """The key that seeds a node's behaviour: partition id if set, else node id."""
    pid = context.node_config.get("partition-id")
    return int(pid) if pid is not None else int(context.node_id)


def is_compromised(context: Context) -> bool:
    """Whether this node is one of the attacker's nodes.

    ``node_config["byzantine"]`` (true/false) decides when present (deployments:
    ``flower-supernode --node-config "byzantine=true"``); otherwise, in simulation,
    ``partition-id ∈ byzantine_partitions(run_config, num-partitions)``.
    """
    if "byzantine" in context.node_config:
        return _parse_bool(context.node_config["byzantine"])
    pid = context.node_config.get("partition-id")
    num = context.node_config.get("num-partitions")
    if pid is None or num is None:
        return False
    return int(pid) in byzantine_partitions(context.run_config, int(num))


def _server_round(msg: Message, context: Context) -> int:
    for record in msg.content.config_records.values():
        if "server-round" in record:
            return int(record["server-round"])  # type: ignore[arg-type]
    # Strategies other than Flower's may not send the round: count train calls.
    state = context.state.config_records.get(_STATE_KEY, ConfigRecord({"calls": 0}))
    calls = int(state["calls"]) + 1  # type: ignore[arg-type]
    context.state[_STATE_KEY] = ConfigRecord({"calls": calls})
    return calls


def _error(msg: Message, reason: str) -> Message:
    log(WARNING, "byzantine_mod: %s", reason)
    return Message(
        Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg
    )


def _single_arrays(content: Any) -> tuple[str, ArrayRecord] | None:
    records = content.array_records
    if len(records) != 1:
        return None
    return next(iter(records.items()))


def byzantine_mod(
    msg: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """Flower client mod: tamper this node's train reply when it plays Byzantine.

    Attach it to any ClientApp, unchanged: ``ClientApp(mods=[byzantine_mod])`` or
    ``@app.train(mods=[byzantine_mod])``. Only ``train`` messages are touched.

    Per train message the mod decides from the contexts alone:

    - whether the node is compromised: ``node_config["byzantine"]`` if set, else
      ``partition-id ∈ byzantine_partitions(run_config, num-partitions)``;
    - whether it plays Byzantine this round: the role schedule of
      ``attack-pattern`` at the ``server-round`` the strategy sent;
    - the attack and its parameters: run-config keys of ``ATTACK_DEFAULTS``.

    An honest node's reply is returned as the app produced it (bit-identical). A
    Byzantine node running an update attack (random-fault, uniform-noise,
    sign-flip, scaling) has its reply replaced by ``w_global + T(w_local −
    w_global)`` with the same keys, dtypes and shapes; integer arrays are left as
    the app sent them. Data attacks (label-flip, adaptive-fault) are published as
    :func:`~flwr_byz.attacks.active_attack` for the app's training code; if the app
    does not claim it, the reply is an error. Omniscient attacks belong to the
    server-side injector (``attack-side = "auto"``): the mod leaves them alone.
    """
    if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
        return call_next(msg, context)
    cfg: Mapping[str, Any] = context.run_config
    check_attack_config(cfg)
    if resolve_side(cfg) != "client" or not is_compromised(context):
        return call_next(msg, context)
    key = node_key(context)
    server_round = _server_round(msg, context)
    if not role_for(cfg, key).is_byzantine(server_round):
        return call_next(msg, context)

    c = merged(cfg)
    attack = str(c["attack"])
    if attack in DATA_ATTACKS:
        active = ActiveAttack(attack, server_round, key, dict(c))
        token = _ACTIVE.set(active)
        try:
            reply = call_next(msg, context)
        finally:
            _ACTIVE.reset(token)
        if not reply.has_error() and not active.claimed:
            return _error(
                msg,
                f"attack={attack!r} poisons the node's data; this ClientApp did not "
                "apply it (its train function must read "
                "flwr_byz.attacks.active_attack() and call .claim()). With other "
                "apps use an update attack (random-fault, uniform-noise, sign-flip, "
                "scaling), or run flwr-byz's clients.client_app.",
            )
        return reply

    incoming = _single_arrays(msg.content)
    if incoming is None:
        return _error(msg, "expects exactly one ArrayRecord in the train message")
    sent = as_numpy(incoming[1])
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    outgoing = _single_arrays(reply.content)
    if outgoing is None:
        return _error(msg, "expects exactly one ArrayRecord in the train reply")
    out_key, out_record = outgoing
    local = as_numpy(out_record)
    try:
        check_same_layout(sent, local)
    except ArrayMismatchError as err:
        return _error(msg, str(err))
    keys = _float_keys(sent)
    delta = flat_update(sent, local, keys)
    lr = float(cfg.get("learning-rate", DEFAULT_LEARNING_RATE))
    generator = attack_generator(int(c["seed"]), key, server_round)
    tampered = tamper_update(attack, delta, cfg, generator, lr)
    reply.content.array_records[out_key] = _apply_update(sent, local, keys, tampered)
    return reply
