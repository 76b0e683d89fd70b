"""ServerSideAttack wraps a strategy and tampers exactly the chosen nodes' replies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from flwr_byz.attacks import ServerSideAttack, alie, alie_z

STEP = 0.1
RECORD: dict[str, object] = {}


def test_rejects_attacks_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="label-flip"):
        ServerSideAttack(FedAvg(), "label-flip", [1])
    with pytest.raises(ValueError, match="attack"):
        ServerSideAttack(FedAvg(), "bogus", [1])
    with pytest.raises(ValueError, match="flip-period"):
        ServerSideAttack(FedAvg(), "ipm", [1], config={"flip-period": 0})


def test_roles_and_delegation() -> None:
    inner = FedAvg(min_train_nodes=7)
    attack = ServerSideAttack(
        inner,
        "min-max",
        [9, 3, 3],
        config={"attack-pattern": "pretense", "pretense-rounds": 2},
    )
    assert attack.byzantine_node_ids == [3, 9]
    assert attack.byzantine_in_round(2) == []
    assert attack.byzantine_in_round(3) == [3, 9]
    assert attack.min_train_nodes == 7  # the wrapped strategy's attributes


def _client_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        out = {}
        for key, arr in msg.content["arrays"].items():
            w = arr.numpy()
            out[key] = Array(w - np.float32(STEP) * (w - np.float32(pid + 1)))
        if pid == BROKEN:  # a broken node: its reply has an extra array
            out["extra"] = Array(np.zeros(1, dtype=np.float32))
        metrics = MetricRecord({"num-examples": 1, "pid": pid})
        content = RecordDict({"arrays": ArrayRecord(out), "metrics": metrics})
        return Message(content, reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"id": MetricRecord({"pid": pid})}), reply_to=msg)

    return app


def _honest_reply(w: np.ndarray, pid: int) -> np.ndarray:
    return w - np.float32(STEP) * (w - np.float32(pid + 1))


BROKEN = 4


@pytest.mark.slow
def test_alie_tampers_exactly_the_chosen_nodes_in_simulation() -> None:
    from flwr.app import MessageType
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    class Recording(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):
            RECORD[f"sent-{server_round}"] = arrays["w"].numpy().copy()
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            RECORD[f"round-{server_round}"] = {
                r.metadata.src_node_id: (
                    int(r.content["metrics"]["pid"]),
                    {k: v.numpy().copy() for k, v in r.content["arrays"].items()},
                )
                for r in replies
            }
            # The broken reply would crash Flower's FedAvg: leave it out here.
            valid = [r for r in replies if "extra" not in r.content["arrays"]]
            return super().aggregate_train(server_round, valid)

    initial = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        nodes: list[int] = []
        while len(nodes) < 6:
            nodes = sorted(grid.get_node_ids())
        queries = [
            Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY)
            for n in nodes
        ]
        pids = {
            r.metadata.src_node_id: int(r.content["id"]["pid"])
            for r in grid.send_and_receive(queries)
        }
        chosen = sorted(n for n, p in pids.items() if p in (0, 3))
        RECORD["chosen"] = chosen
        strategy = ServerSideAttack(
            Recording(fraction_evaluate=0.0, min_train_nodes=6, min_available_nodes=6),
            "alie",
            chosen,
            seed=1,
            config={"attack-pattern": "pretense", "pretense-rounds": 1},
        )
        strategy.start(grid, ArrayRecord({"w": Array(initial)}), num_rounds=2)
        RECORD["tampered"] = dict(strategy.tampered)

    RECORD.clear()
    run_simulation(
        server,
        _client_app(),
        num_supernodes=6,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    chosen = RECORD["chosen"]
    assert len(chosen) == 2
    assert RECORD["tampered"] == {1: [], 2: chosen}

    # Round 1: pretense, every reply is what the node computed.
    for pid, got in RECORD["round-1"].values():
        assert got["w"].tobytes() == _honest_reply(initial, pid).tobytes()

    # Round 2: the chosen nodes send ALIE of the 3 honest, parseable updates
    # (n = 5 parseable replies, f = 2); the others pass through untouched.
    sent = RECORD["sent-2"]
    round2 = RECORD["round-2"]
    assert len(round2) == 6
    honest = [
        (got["w"] - sent).ravel().astype(np.float64)
        for nid, (pid, got) in round2.items()
        if nid not in chosen and pid != BROKEN
    ]
    assert len(honest) == 3
    expected = alie(torch.tensor(np.stack(honest)), alie_z(5, 2)).numpy().reshape(3, 4)
    for nid, (pid, got) in round2.items():
        if nid in chosen:
            np.testing.assert_allclose(got["w"] - sent, expected, atol=1e-6)
            assert not np.allclose(got["w"], _honest_reply(sent, pid), atol=1e-3)
        else:
            assert got["w"].tobytes() == _honest_reply(sent, pid).tobytes()
            assert ("extra" in got) == (pid == BROKEN)


def test_from_run_config_wraps_only_server_side_attacks() -> None:
    inner = FedAvg()
    partitions = {101: 0, 102: 1, 103: 2, 104: 3, 105: 4, 106: 5, 107: 6, 108: 7}
    # Attacks the malicious clients run are not wrapped (no double tampering).
    for cfg in ({}, {"attack": "random-fault", "byzantine-fraction": 0.25}):
        assert ServerSideAttack.from_run_config(inner, cfg, partitions) is inner
    cfg = {
        "attack": "ipm",
        "byzantine-partitions": "1,6",
        "seed": 4,
        "ipm-epsilon": 2.0,
    }
    wrapped = ServerSideAttack.from_run_config(inner, cfg, partitions)
    assert isinstance(wrapped, ServerSideAttack)
    assert wrapped.byzantine_node_ids == [102, 107]
    assert wrapped.config["ipm-epsilon"] == 2.0
    assert wrapped.seed == 4
    side = {"attack": "sign-flip", "attack-side": "server", "byzantine-fraction": 0.25}
    forced = ServerSideAttack.from_run_config(inner, side, partitions)
    assert isinstance(forced, ServerSideAttack)
    assert len(forced.byzantine_node_ids) == 2
