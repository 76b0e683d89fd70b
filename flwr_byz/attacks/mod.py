"""``byzantine_mod``: a Flower client mod that makes any ClientApp malicious.

Two ways to attach it:

- configured by its own arguments, no run-config keys needed::

      app = ClientApp(mods=[byzantine_mod(attack="sign-flip", fraction=0.3, seed=0)])

  (the run config's attack keys, where the app defines them, override the
  arguments unless ``run_config_override=False``);
- bare, ``ClientApp(mods=[byzantine_mod])``: everything from the run config's attack
  keys (this repository's app, whose ``pyproject.toml`` defines them all).

A mod that has no attack configured anywhere, whose attack names no attacker in a
simulation (no fraction, no partitions), that meets a run-config key that looks like
a misspelt attack key, or that is given an unknown argument raises at start-up
instead of silently running honest. Every configuration error the mod raises or
replies with names :data:`CONFIGURATION_ERROR`, so a server recognises it in the
error reply Flower sends (:func:`is_configuration_error`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from flwr_byz.configuration_errors import CONFIGURATION_ERROR
from flwr_byz.records import IDENTITY_RECORD

from ._flat import ArrayMismatchError, as_numpy, check_same_layout, flat_update
from ._flat import apply_update as _apply_update
from ._flat import float_keys as _float_keys
from .active import _ACTIVE, ActiveAttack
from .behaviour import attack_generator, tamper_update
from .config import (
    ATTACK_DEFAULTS,
    DATA_ATTACKS,
    DEFAULT_LEARNING_RATE,
    byzantine_partitions,
    check_attack_config,
    merged,
    parse_partition_list,
    resolve_side,
    role_for,
)

_STATE_KEY = "flwr-byz-mod"
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


class ModConfigurationError(ValueError):
    """The mod cannot run as configured; the message starts with
    :data:`CONFIGURATION_ERROR`."""

    def __init__(self, text: str) -> None:
        super().__init__(f"{CONFIGURATION_ERROR}: {text}")


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


def is_compromised(context: Context, config: Mapping[str, Any] | None = None) -> bool:
    """Whether this node is one of the attacker's nodes.

    ``node_config["byzantine"]`` (true/false) decides when present (deployments:
    ``flower-supernode --node-config "byzantine=true"``); otherwise, in simulation,
    ``partition-id ∈ byzantine_partitions(config, num-partitions)``. ``config`` is
    the attack configuration (default: the context's run config).
    """
    if "byzantine" in context.node_config:
        return _parse_bool(context.node_config["byzantine"])
    pid = context.node_config.get("partition-id")
    num = context.node_config.get("num-partitions")
    if pid is None or num is None:
        return False
    cfg = context.run_config if config is None else config
    return int(pid) in byzantine_partitions(cfg, int(num))


def _server_round(msg: Message, context: Context) -> int:
    for record in msg.content.config_records.values():
        if "server-round" in record:
            return int(record["server-round"])  # type: ignore[arg-type]
    # Strategies other than Flower's may not send the round: count train calls.
    state = context.state.config_records.get(_STATE_KEY, ConfigRecord({"calls": 0}))
    calls = int(state.get("calls", 0)) + 1  # type: ignore[arg-type]
    state["calls"] = calls
    context.state[_STATE_KEY] = state
    return calls


def _error(msg: Message, reason: str) -> Message:
    text = f"{CONFIGURATION_ERROR}: {reason}"
    log(WARNING, "%s", text)
    return Message(
        Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=text), reply_to=msg
    )


def _single_arrays(content: Any) -> tuple[str, ArrayRecord] | None:
    records = content.array_records
    if len(records) != 1:
        return None
    return next(iter(records.items()))


# Constructor argument -> run-config key. Every other attack key is its run-config
# name in snake case (noise_mean -> "noise-mean").
_ALIASES = {
    "fraction": "byzantine-fraction",
    "partitions": "byzantine-partitions",
    "pattern": "attack-pattern",
    "side": "attack-side",
}
# Keys the mod reads besides the attack keys.
_EXTRA_KEYS = ("seed", "learning-rate")
_KNOWN_KEYS = (*ATTACK_DEFAULTS, *_EXTRA_KEYS)
_ANNOUNCED: set[tuple[int, int]] = set()
_WARNED: set[tuple] = set()


def _argument_key(name: str) -> str:
    if name in _ALIASES:
        return _ALIASES[name]
    key = name.replace("_", "-")
    if key in _KNOWN_KEYS:
        return key
    names = [*_ALIASES, *(k.replace("-", "_") for k in _KNOWN_KEYS)]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise TypeError(
        f"byzantine_mod() got an unknown argument {name!r}{hint} Known: "
        + ", ".join(sorted(names))
    )


def _misspelt_run_config_keys(run_config: Mapping[str, Any]) -> list[str]:
    """Run-config keys that are not attack keys but look like one (typos)."""
    out = []
    for key in run_config:
        if key in _KNOWN_KEYS:
            continue
        close = difflib.get_close_matches(key, ATTACK_DEFAULTS, n=1, cutoff=0.85)
        if close:
            out.append(f"{key!r} (did you mean {close[0]!r}?)")
    return out


class ByzantineMod:
    """A configured :func:`byzantine_mod`: a Flower client mod (callable).

    Build it with ``byzantine_mod(attack=..., fraction=..., seed=..., ...)``; the
    arguments are the attack keys of :data:`~flwr_byz.attacks.ATTACK_DEFAULTS` in
    snake case (``noise_mean=0.5``), plus ``fraction`` (``byzantine-fraction``),
    ``partitions`` (``byzantine-partitions``: ``"0,3"`` or a list), ``pattern``
    (``attack-pattern``), ``side`` (``attack-side``), ``seed`` and
    ``learning_rate`` (the honest clients' λ, used by the noise attacks).

    Parameters
    ----------
    run_config_override : bool
        When true (default), attack keys present in the run config override the
        arguments; when false, the run config is ignored.
    **arguments
        As above. An unknown name raises ``TypeError``; an invalid value raises
        ``ValueError`` here, at start-up.
    """

    def __init__(self, *, run_config_override: bool = True, **arguments: Any) -> None:
        config: dict[str, Any] = {}
        for name, value in arguments.items():
            key = _argument_key(name)
            if key == "byzantine-partitions" and isinstance(value, (list, tuple)):
                value = ",".join(str(i) for i in parse_partition_list(list(value)))
            config[key] = value
        self.config = config
        self.run_config_override = bool(run_config_override)
        if config:
            check_attack_config(config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"byzantine_mod({args})"

    def effective_config(self, run_config: Mapping[str, Any]) -> dict[str, Any]:
        """The attack configuration for ``run_config``: checked, never silent.

        Raises
        ------
        ModConfigurationError
            A ``ValueError``: when no source configures ``attack`` (the mod would
            silently run honest), when the run config holds a key that looks like a
            misspelt attack key, or when a value is invalid.
        """
        cfg: dict[str, Any] = dict(self.config)
        if self.run_config_override:
            typos = _misspelt_run_config_keys(run_config)
            if typos:
                raise ModConfigurationError(
                    "unknown run-config key(s) "
                    + ", ".join(typos)
                    + "; the attack keys are: "
                    + ", ".join(ATTACK_DEFAULTS)
                )
            cfg.update({k: run_config[k] for k in _KNOWN_KEYS if k in run_config})
        if "attack" not in cfg:
            raise ModConfigurationError(
                "no attack configured: the run config has no "
                "'attack' key and the mod was given no arguments, so every node "
                "would run honest. Configure it in the app: "
                'ClientApp(mods=[byzantine_mod(attack="sign-flip", fraction=0.3, '
                "seed=0)]), or define the attack keys in [tool.flwr.app.config] "
                '(attack = "none" for an honest run).'
            )
        try:
            check_attack_config(cfg)
        except ValueError as err:
            raise ModConfigurationError(str(err)) from err
        return cfg

    def node_config_checked(
        self, run_config: Mapping[str, Any], node_config: Mapping[str, Any]
    ) -> dict[str, Any]:
        """:meth:`effective_config`, and, on a simulated node (one with a
        ``partition-id`` and no ``byzantine`` switch), an update attack must name
        its attackers: ``fraction`` or ``partitions`` (they have no default).

        Raises
        ------
        ModConfigurationError
            As :meth:`effective_config`, or for an attack without attackers.
        """
        cfg = self.effective_config(run_config)
        simulated = "partition-id" in node_config and "byzantine" not in node_config
        if (
            simulated
            and str(cfg["attack"]) != "none"
            and resolve_side(cfg) == "client"
            and "byzantine-fraction" not in cfg
            and "byzantine-partitions" not in cfg
        ):
            raise ModConfigurationError(
                f"attack={cfg['attack']!r} names no attacker: give the share of "
                "nodes that attack or their partitions, e.g. "
                f'byzantine_mod(attack="{cfg["attack"]}", fraction=0.3) or '
                f'byzantine_mod(attack="{cfg["attack"]}", partitions="0,3") (in a '
                'deployment: flower-supernode --node-config "byzantine=true" on '
                "the attacking nodes)."
            )
        return cfg

    def __call__(
        self, msg: Message, context: Context, call_next: ClientAppCallable
    ) -> Message:
        """Flower client mod: tamper this node's train reply when it plays Byzantine.

        Per message the mod decides from its configuration and the contexts alone:

        - whether the node is compromised: ``node_config["byzantine"]`` if set,
          else ``partition-id ∈ byzantine_partitions(config, num-partitions)``;
        - whether it plays Byzantine this round: the role schedule of
          ``attack-pattern`` at the ``server-round`` the strategy sent;
        - the attack and its parameters.

        Only ``train`` messages are touched, but every message checks the
        configuration first (a wrong set-up fails on the first message). An
        honest node's reply is returned as the app produced it (bit-identical). A
        Byzantine node running an update attack (random-fault, uniform-noise,
        sign-flip, scaling) has its reply replaced by ``w_global + T(w_local −
        w_global)`` with the same keys, dtypes and shapes; integer arrays are left
        as the app sent them. Data attacks (label-flip, adaptive-fault) are
        published as :func:`~flwr_byz.attacks.active_attack` for the app's
        training code; if the app does not claim it, the reply is an error.
        Omniscient attacks belong to the server-side injector (``attack-side =
        "auto"``): the mod leaves them alone.
        """
        cfg = self.node_config_checked(context.run_config, context.node_config)
        if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
            return call_next(msg, context)
        return _with_identity(self._train(msg, context, call_next, cfg), context)

    @staticmethod
    def _train(
        msg: Message,
        context: Context,
        call_next: ClientAppCallable,
        cfg: Mapping[str, Any],
    ) -> Message:
        if resolve_side(cfg) != "client":
            return call_next(msg, context)
        _warn_if_no_attacker(cfg, context)
        if not is_compromised(context, cfg):
            return call_next(msg, context)
        key = node_key(context)
        _announce(cfg, context)
        server_round = _server_round(msg, context)
        if not role_for(cfg, key).is_byzantine(server_round):
            return call_next(msg, context)
        return _attack(msg, context, call_next, cfg, key, server_round)


def _with_identity(reply: Message, context: Context) -> Message:
    """Simulation: tell the server which partition this node holds.

    A ConfigRecord ``flwr-byz-identity`` = ``{"partition-id": p}`` joins the train
    reply (arrays and metrics untouched), so the strategies' diagnostics can map
    Flower's random node ids to partitions (``partition-ids``). Nothing is added
    where Flower gives no partition id (deployments).
    """
    pid = context.node_config.get("partition-id")
    if pid is None or reply.has_error() or not reply.has_content():
        return reply
    reply.content[IDENTITY_RECORD] = ConfigRecord({"partition-id": int(pid)})
    return reply


def _partition_text(context: Context) -> str:
    pid = context.node_config.get("partition-id")
    num = context.node_config.get("num-partitions")
    if pid is None:
        return "no partition id (deployment)"
    return f"partition {pid}" + (f" of {num}" if num is not None else "")


def _announce(cfg: Mapping[str, Any], context: Context) -> None:
    """Log once per (run, node) that this node is malicious, and how."""
    marker = (int(context.run_id), int(context.node_id))
    state = context.state.config_records.get(_STATE_KEY)
    if marker in _ANNOUNCED or (state is not None and "announced" in state):
        return
    _ANNOUNCED.add(marker)
    record = ConfigRecord({"calls": 0}) if state is None else state
    record["announced"] = 1
    context.state[_STATE_KEY] = record
    c = merged(cfg)
    pattern = str(c["attack-pattern"])
    detail = {
        "pretense": f" after {c['pretense-rounds']} honest round(s)",
        "randomized": (
            f", role re-drawn every {c['flip-period']} round(s) with probability "
            f"{c['flip-probability']}"
        ),
    }.get(pattern, "")
    log(
        INFO,
        "byzantine_mod: node %d (%s) is MALICIOUS: attack=%s, pattern=%s%s, seed=%s",
        int(context.node_id),
        _partition_text(context),
        c["attack"],
        pattern,
        detail,
        c["seed"],
    )


def _warn_if_no_attacker(cfg: Mapping[str, Any], context: Context) -> None:
    """Simulation: say once when the configured attack selects no partition."""
    if "byzantine" in context.node_config:
        return
    num = context.node_config.get("num-partitions")
    if num is None:
        return
    token = (tuple(sorted((k, repr(v)) for k, v in cfg.items())), int(num))
    if token in _WARNED:
        return
    _WARNED.add(token)
    if not byzantine_partitions(cfg, int(num)):
        c = merged(cfg)
        log(
            WARNING,
            "byzantine_mod: attack=%s is configured but selects no node: "
            "byzantine-fraction=%s of num-partitions=%s and byzantine-partitions=%r; "
            "every node runs honest",
            c["attack"],
            c["byzantine-fraction"],
            num,
            c["byzantine-partitions"],
        )


def _attack(
    msg: Message,
    context: Context,
    call_next: ClientAppCallable,
    cfg: Mapping[str, Any],
    key: int,
    server_round: int,
) -> Message:
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


_BARE = ByzantineMod()


def byzantine_mod(*args: Any, **kwargs: Any) -> Any:
    """Flower client mod that makes a malicious minority of any ClientApp.

    Two uses:

    - ``byzantine_mod(attack="sign-flip", fraction=0.3, seed=0, ...)`` returns a
      configured :class:`ByzantineMod`: ``ClientApp(mods=[byzantine_mod(...)])``.
      No run-config keys are needed; the run config's attack keys, where the app
      defines them, override the arguments (``run_config_override=False`` turns
      that off). Unknown arguments and invalid values raise here.
    - ``byzantine_mod`` itself is the mod configured only by the run config
      (``ClientApp(mods=[byzantine_mod])``): the app's ``pyproject.toml`` must
      define ``attack`` (``"none"`` for an honest run), else the first message
      raises.

    See :meth:`ByzantineMod.__call__` for what the mod does per message. Each
    malicious node logs once, at INFO, its node id, partition and behaviour.
    """
    if len(args) == 3 and not kwargs:
        return _BARE(*args)
    if len(args) == 1 and isinstance(args[0], str):
        return ByzantineMod(attack=args[0], **kwargs)
    if args:
        raise TypeError(
            "byzantine_mod takes keyword arguments (byzantine_mod(attack=..., "
            "fraction=..., seed=...)) or is used bare as a mod"
        )
    return ByzantineMod(**kwargs)
