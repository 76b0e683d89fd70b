"""byzantine_mod turns an unmodified ClientApp malicious; honest nodes stay untouched.

The fast tests drive ClientApp's real call path (``app(message, context)``) with real
Message/Context objects; the slow one runs the mod inside Flower's simulation engine.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from message_helpers import delivered, node_context, run_config_mod

from flwr_byz.attacks import (
    DEFAULT_LEARNING_RATE,
    ByzantineMod,
    active_attack,
    byzantine_mod,
    byzantine_partitions,
)

STEP = 0.1


def _user_app(mods: list) -> ClientApp:
    """A user's ClientApp, written without any knowledge of flwr-byz."""
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        # One gradient step on ½‖w − t‖², t depending on the node's data (its id).
        target = float(context.node_config.get("partition-id", 0)) + 1.0
        out = {}
        for key, arr in msg.content["arrays"].items():
            w = arr.numpy()
            if np.issubdtype(w.dtype, np.floating):
                out[key] = (w - w.dtype.type(STEP) * (w - w.dtype.type(target))).astype(
                    w.dtype
                )
            else:
                out[key] = w + 1  # e.g. a step counter
        metrics = MetricRecord({"num-examples": 10, "train-loss": 0.25})
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v) for k, v in out.items()}),
                "metrics": metrics,
            }
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"num-examples": 10, "eval-loss": 0.5})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def _arrays() -> ArrayRecord:
    rng = np.random.default_rng(0)
    arrays = {
        "w": rng.standard_normal((4, 3)).astype(np.float32),
        "b": rng.standard_normal(3).astype(np.float64),
        "steps": np.array([5], dtype=np.int64),
    }
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _msg(server_round: int, message_type: str = MessageType.TRAIN) -> Message:
    content = RecordDict(
        {"arrays": _arrays(), "config": ConfigRecord({"server-round": server_round})}
    )
    return delivered(
        content,
        message_type,
        dst_node_id=7,
        message_id=f"m{server_round}",
        group_id=str(server_round),
    )


def _ctx(run_config: dict, node_config: dict | None = None) -> Context:
    if node_config is None:
        node_config = {"partition-id": 1, "num-partitions": 4}
    return node_context(node_config, run_config, node_id=7)


def _np(reply: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content["arrays"].items()}


def _same_reply(a: Message, b: Message) -> bool:
    x, y = _np(a), _np(b)
    return (
        list(x) == list(y)
        and all(
            x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes() for k in x
        )
        and dict(a.content["metrics"]) == dict(b.content["metrics"])
    )


BYZ = {"attack": "sign-flip", "byzantine-partitions": "1"}


def test_honest_node_reply_is_bit_identical() -> None:
    plain, wrapped = _user_app([]), _user_app([byzantine_mod])
    for cfg in (
        {"attack": "none"},
        {**BYZ, "byzantine-partitions": "0,2"},
        {"attack": "alie", "byzantine-partitions": "1"},
    ):
        assert _same_reply(wrapped(_msg(3), _ctx(cfg)), plain(_msg(3), _ctx(cfg)))


def test_sign_flip_sends_minus_delta_with_same_layout() -> None:
    plain, wrapped = _user_app([]), _user_app([byzantine_mod])
    honest = _np(plain(_msg(1), _ctx(BYZ)))
    reply = wrapped(_msg(1), _ctx(BYZ))
    got, sent = _np(reply), {k: v.numpy() for k, v in _arrays().items()}
    assert list(got) == list(sent)
    for key in ("w", "b"):
        assert got[key].dtype == sent[key].dtype
        assert got[key].shape == sent[key].shape
        expected = sent[key] - (honest[key] - sent[key])
        np.testing.assert_allclose(got[key], expected, rtol=1e-6, atol=1e-6)
    # Integer arrays are not part of the update: what the app sent is kept.
    assert np.array_equal(got["steps"], honest["steps"])
    assert dict(reply.content["metrics"]) == {"num-examples": 10, "train-loss": 0.25}


def test_random_fault_update_is_minus_lr_times_gaussian() -> None:
    cfg = {**BYZ, "attack": "random-fault", "learning-rate": 0.2}
    got = _np(_user_app([byzantine_mod])(_msg(2), _ctx(cfg)))
    sent = {k: v.numpy() for k, v in _arrays().items()}
    delta = np.concatenate([(got[k] - sent[k]).ravel() for k in ("w", "b")])
    np.testing.assert_allclose(delta, -0.2 * 0.5, atol=1e-5)
    # Same seed, node and round: the same tampered reply, in any process.
    again = _np(_user_app([byzantine_mod])(_msg(2), _ctx(cfg)))
    assert all(again[k].tobytes() == got[k].tobytes() for k in got)


def test_noise_attack_uses_default_learning_rate_without_key() -> None:
    cfg = {**BYZ, "attack": "random-fault", "noise-mean": 1.0}
    got = _np(_user_app([byzantine_mod])(_msg(2), _ctx(cfg)))
    sent = _arrays()["b"].numpy()
    np.testing.assert_allclose(got["b"] - sent, -DEFAULT_LEARNING_RATE, atol=1e-5)


def test_pretense_is_honest_for_l_rounds_then_attacks() -> None:
    plain, wrapped = _user_app([]), _user_app([byzantine_mod])
    cfg = {**BYZ, "attack-pattern": "pretense", "pretense-rounds": 2}
    ctx = _ctx(cfg)
    honest = [
        _same_reply(wrapped(_msg(t), ctx), plain(_msg(t), ctx)) for t in range(1, 5)
    ]
    assert honest == [True, True, False, False]


def test_node_config_switch_for_deployments() -> None:
    plain, wrapped = _user_app([]), _user_app([byzantine_mod])
    cfg = {"attack": "sign-flip"}  # no fraction, no partition list: only the switch
    on, off = _ctx(cfg, {"byzantine": "true"}), _ctx(cfg, {"byzantine": False})
    assert not _same_reply(wrapped(_msg(1), on), plain(_msg(1), on))
    assert _same_reply(wrapped(_msg(1), off), plain(_msg(1), off))
    with pytest.raises(ValueError, match="byzantine"):
        wrapped(_msg(1), _ctx(cfg, {"byzantine": "maybe"}))


def test_evaluate_messages_pass_untouched() -> None:
    wrapped = _user_app([byzantine_mod])
    reply = wrapped(_msg(1, MessageType.EVALUATE), _ctx(BYZ))
    assert dict(reply.content["metrics"]) == {"num-examples": 10, "eval-loss": 0.5}


def test_data_attack_on_a_foreign_app_is_an_error_reply() -> None:
    reply = _user_app([byzantine_mod])(_msg(1), _ctx({**BYZ, "attack": "label-flip"}))
    assert reply.has_error()
    assert "label-flip" in reply.error.reason


def test_data_attack_is_published_to_the_app() -> None:
    seen = []
    app = ClientApp(mods=[byzantine_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        attack = active_attack()
        seen.append(None if attack is None else (attack.name, attack.server_round))
        if attack is not None:
            attack.claim()
        content = RecordDict({"arrays": msg.content["arrays"]})
        return Message(content, reply_to=msg)

    cfg = {**BYZ, "attack": "label-flip"}
    assert not app(_msg(4), _ctx(cfg)).has_error()
    app(_msg(4), _ctx(cfg, {"partition-id": 0, "num-partitions": 4}))
    assert seen == [("label-flip", 4), None]
    assert active_attack() is None


def test_bad_attack_config_fails_loudly() -> None:
    with pytest.raises(ValueError, match="flip-period"):
        _user_app([byzantine_mod])(_msg(1), _ctx({**BYZ, "flip-period": 0}))


def test_configured_mod_needs_no_run_config_keys() -> None:
    plain = _user_app([])
    mod = byzantine_mod(attack="sign-flip", partitions=[1], seed=0)
    assert isinstance(mod, ByzantineMod)
    wrapped = _user_app([mod])
    honest, sent = _np(plain(_msg(1), _ctx({}))), _arrays()["w"].numpy()
    got = _np(wrapped(_msg(1), _ctx({})))["w"]
    np.testing.assert_allclose(got, sent - (honest["w"] - sent), rtol=1e-6, atol=1e-6)
    # Partition 0 is not in the list: bit-identical to the unwrapped app.
    ctx0 = {"partition-id": 0, "num-partitions": 4}
    assert _same_reply(wrapped(_msg(1), _ctx({}, ctx0)), plain(_msg(1), _ctx({}, ctx0)))


def test_run_config_overrides_the_arguments_unless_told_not_to() -> None:
    plain = _user_app([])
    args = {"attack": "sign-flip", "partitions": "1"}
    cfg = {"attack": "none"}
    overridden = _user_app([byzantine_mod(**args)])
    assert _same_reply(overridden(_msg(1), _ctx(cfg)), plain(_msg(1), _ctx(cfg)))
    fixed = _user_app([byzantine_mod(**args, run_config_override=False)])
    assert not _same_reply(fixed(_msg(1), _ctx(cfg)), plain(_msg(1), _ctx(cfg)))


def test_unknown_or_invalid_arguments_fail_at_start_up() -> None:
    with pytest.raises(TypeError, match="did you mean 'fraction'"):
        byzantine_mod(attack="sign-flip", fracton=0.3)
    with pytest.raises(ValueError, match="byzantine-fraction"):
        byzantine_mod(attack="sign-flip", fraction=1.5)
    with pytest.raises(ValueError, match="attack="):
        byzantine_mod(attack="sign-flipp")


def test_bare_mod_without_attack_keys_fails_loudly() -> None:
    wrapped = _user_app([byzantine_mod])
    for message_type in (MessageType.TRAIN, MessageType.EVALUATE):
        with pytest.raises(ValueError, match="no attack configured"):
            wrapped(_msg(1, message_type), _ctx({"num-server-rounds": 3}))


def test_misspelt_run_config_key_fails_loudly() -> None:
    wrapped = _user_app([byzantine_mod(attack="sign-flip", fraction=0.5)])
    with pytest.raises(ValueError, match=r"'byzantine-fration'.*did you mean"):
        wrapped(_msg(1), _ctx({"byzantine-fration": 0.5, "num-server-rounds": 3}))


def test_an_update_attack_without_attackers_fails_on_a_simulated_node() -> None:
    """``byzantine_mod(attack=...)`` alone names no attacker: an error, not an
    honest run with a warning."""
    from flwr_byz.attacks import ModConfigurationError

    plain = _user_app([])
    wrapped = _user_app([byzantine_mod(attack="sign-flip")])
    for message_type in (MessageType.TRAIN, MessageType.EVALUATE):
        with pytest.raises(ModConfigurationError, match="names no attacker"):
            wrapped(_msg(1, message_type), _ctx({}))
    # A deployment's node switch picks the attacker; a node without one is honest.
    attacked = wrapped(_msg(1), _ctx({}, {"byzantine": "true"}))
    assert not _same_reply(attacked, plain(_msg(1), _ctx({}, {"byzantine": "true"})))
    honest = wrapped(_msg(1), _ctx({}, {}))
    assert _same_reply(honest, plain(_msg(1), _ctx({}, {})))
    # Named attackers, an explicit (if empty) fraction, or a run config that gives
    # the fraction: no error.
    for mod, cfg in (
        (byzantine_mod(attack="sign-flip", partitions="1"), {}),
        (byzantine_mod(attack="sign-flip", fraction=0.0), {}),
        (byzantine_mod(attack="sign-flip"), {"byzantine-fraction": 0.5}),
        (byzantine_mod(attack="none"), {}),
    ):
        _user_app([mod])(_msg(1), _ctx(cfg))


def test_every_configuration_error_is_recognisable_in_its_reply() -> None:
    from flwr.app import Error
    from flwr.common.constant import ErrorCode

    from flwr_byz.attacks import (
        CONFIGURATION_ERROR,
        ModConfigurationError,
        is_configuration_error,
    )

    def reason(mod, cfg: dict) -> str:
        with pytest.raises(ModConfigurationError) as caught:
            _user_app([mod])(_msg(1), _ctx(cfg))
        return str(caught.value)

    raised = [
        reason(byzantine_mod, {}),  # bare, no attack key
        reason(byzantine_mod(attack="sign-flip"), {}),  # no attacker
        reason(byzantine_mod, {**BYZ, "flip-period": 0}),  # invalid value
        reason(byzantine_mod(attack="scaling", fraction=0.5), {"atack-side": "x"}),
    ]
    for text in raised:
        assert text.startswith(f"{CONFIGURATION_ERROR}: ")
        flower = Message(
            Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=text),
            reply_to=_msg(1),
        )
        assert is_configuration_error(flower)
    # The error replies the mod sends itself (a data attack the app ignores).
    ignored = _user_app([byzantine_mod])(
        _msg(1), _ctx({"attack": "label-flip", "byzantine-partitions": "1"})
    )
    assert is_configuration_error(ignored)
    other = Message(Error(code=ErrorCode.UNKNOWN, reason="boom"), reply_to=_msg(1))
    assert not is_configuration_error(other)
    assert not is_configuration_error(_user_app([])(_msg(1), _ctx({})))


def test_each_malicious_node_says_once_what_it_does() -> None:
    import logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    try:
        mod = byzantine_mod(attack="sign-flip", partitions="1", seed=0)
        wrapped = _user_app([mod])
        ctx = Context(
            run_id=987,
            node_id=4242,
            node_config={"partition-id": 1, "num-partitions": 4},
            state=RecordDict(),
            run_config={},
        )
        honest = _ctx({}, {"partition-id": 2, "num-partitions": 4})
        for server_round in (1, 2, 3):
            wrapped(_msg(server_round), ctx)
            wrapped(_msg(server_round), honest)
    finally:
        logger.removeHandler(handler)
    said = [r for r in records if "MALICIOUS" in r]
    assert len(said) == 1
    assert "node 4242" in said[0] and "partition 1 of 4" in said[0]
    assert "sign-flip" in said[0]


def test_simulation_replies_say_which_partition_they_hold() -> None:
    from flwr_byz.records import IDENTITY_RECORD

    wrapped = _user_app([byzantine_mod(attack="sign-flip", partitions="3")])
    reply = wrapped(_msg(1), _ctx({}))  # honest partition 1 of 4
    assert dict(reply.content[IDENTITY_RECORD]) == {"partition-id": 1}
    assert dict(reply.content["metrics"]) == {"num-examples": 10, "train-loss": 0.25}
    deployed = wrapped(_msg(1), _ctx({}, {"byzantine": False}))
    assert IDENTITY_RECORD not in deployed.content


def test_strategy_metrics_map_node_ids_to_partitions() -> None:
    from strategy_helpers import instructions, server_identity

    from flwr_byz.strategy import Mean

    wrapped = _user_app([byzantine_mod(attack="none")])
    with server_identity():
        strategy = Mean()
        theta = {k: v.numpy() for k, v in _arrays().items()}
        msgs = instructions(strategy, 1, theta, [11, 12, 13])
        replies = []
        for m in msgs:
            pid = m.metadata.dst_node_id - 6
            ctx = node_context(
                {"partition-id": pid, "num-partitions": 9},
                {},
                node_id=m.metadata.dst_node_id,
            )
            train_msg = Message(m.content, metadata=m.metadata)
            reply = wrapped(train_msg, ctx)
            reply.metadata.__dict__["_src_node_id"] = m.metadata.dst_node_id
            replies.append(reply)
        _, metrics = strategy.aggregate_train(1, replies)
    pairs = zip(metrics["node-ids"], metrics["partition-ids"], strict=True)
    assert dict(pairs) == {11: 5, 12: 6, 13: 7}


# ----------------------------------------------------------------------------------
# Flower's simulation engine
# ----------------------------------------------------------------------------------

SIM_CFG = {
    "attack": "sign-flip",
    "byzantine-fraction": 0.5,
    "attack-pattern": "pretense",
    "pretense-rounds": 1,
    "seed": 3,
}
SIM_RECORD: dict[int, list[tuple[int, dict, dict]]] = {}


_with_run_config = run_config_mod(SIM_CFG)


SIM_ERRORS: dict[int, list[str]] = {}
SIM_IDENTITY: dict[int, list[tuple[int, dict]]] = {}


def _simulate(mods: list) -> None:
    """Two rounds of FedAvg over 4 supernodes in Flower's simulation engine."""
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    class Recording(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):
            self._sent = {k: v.numpy().copy() for k, v in arrays.items()}
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            SIM_ERRORS[server_round] = [
                r.error.reason for r in replies if r.has_error()
            ]
            SIM_IDENTITY[server_round] = [
                (
                    int(r.content["metrics"]["pid"]),
                    dict(r.content.config_records.get("flwr-byz-identity", {})),
                )
                for r in replies
                if not r.has_error()
            ]
            SIM_RECORD[server_round] = [
                (
                    int(r.content["metrics"]["pid"]),
                    self._sent,
                    {k: v.numpy().copy() for k, v in r.content["arrays"].items()},
                )
                for r in replies
                if not r.has_error()
            ]
            if SIM_ERRORS[server_round]:
                return None, None
            return super().aggregate_train(server_round, replies)

    client = _user_app([])  # the user's app, unchanged
    pid_app = ClientApp(mods=mods)

    @pid_app.train()
    def train(msg: Message, context: Context) -> Message:
        # Tag the reply with the partition so the test can check each node.
        reply = client(msg, context)
        reply.content["metrics"]["pid"] = int(context.node_config["partition-id"])
        return reply

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        Recording(
            fraction_evaluate=0.0, min_train_nodes=4, min_available_nodes=4
        ).start(grid, _arrays(), num_rounds=2)

    SIM_RECORD.clear()
    SIM_ERRORS.clear()
    run_simulation(
        server,
        pid_app,
        num_supernodes=4,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )


def _check_sign_flip_after_pretense() -> None:
    byzantine = byzantine_partitions(SIM_CFG, 4)
    assert len(byzantine) == 2
    for server_round in (1, 2):
        assert SIM_ERRORS[server_round] == []
        assert sorted(pid for pid, _, _ in SIM_RECORD[server_round]) == [0, 1, 2, 3]
        for pid, sent, got in SIM_RECORD[server_round]:
            target = float(pid + 1)
            honest = {
                k: (
                    sent[k]
                    - sent[k].dtype.type(STEP) * (sent[k] - sent[k].dtype.type(target))
                ).astype(sent[k].dtype)
                for k in ("w", "b")
            }
            attacked = server_round == 2 and pid in byzantine
            for k in ("w", "b"):
                if attacked:
                    expected = sent[k] - (honest[k] - sent[k])
                    np.testing.assert_allclose(got[k], expected, rtol=1e-6, atol=1e-6)
                else:
                    assert got[k].tobytes() == honest[k].tobytes()


@pytest.mark.slow
def test_mod_in_flower_simulation_engine() -> None:
    """The bare mod, attack keys from the run config (as this repo's app has them)."""
    _simulate([_with_run_config, byzantine_mod])
    _check_sign_flip_after_pretense()


@pytest.mark.slow
def test_configured_mod_in_an_app_without_attack_keys() -> None:
    """One line, no pyproject keys: run_simulation's run config is empty."""
    mod = byzantine_mod(
        attack="sign-flip", fraction=0.5, pattern="pretense", pretense_rounds=1, seed=3
    )
    _simulate([mod])
    _check_sign_flip_after_pretense()
    # Every reply names its partition (node id -> partition id on the server).
    for server_round in (1, 2):
        assert all(
            ident == {"partition-id": pid} for pid, ident in SIM_IDENTITY[server_round]
        )


@pytest.mark.slow
def test_misconfigured_mod_fails_loudly_in_simulation() -> None:
    """The bare mod in an app whose run config has no attack keys: every reply is
    an error naming the cause, not 24 silent honest rounds."""
    _simulate([byzantine_mod])
    assert SIM_RECORD[1] == []
    assert len(SIM_ERRORS[1]) == 4
    assert all("no attack configured" in reason for reason in SIM_ERRORS[1])
