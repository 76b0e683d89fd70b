"""The adaptive-attack suite: defence-aware colluders in the server-side injector.

Each attack's defining property on real tensors (a real model on the generated
Yelp-style data where the attack runs the model), each name through the run
config and the grid, and real runs of the app by name.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import Strategy
from torch.nn import functional as F

from flwr_byz.aggregation import coordinate_median, krum, trimmed_mean
from flwr_byz.attacks import (
    ADAPTIVE_ATTACKS,
    ServerSideAttack,
    agr_tailored,
    check_attack_config,
    drift_weight,
    fang_krum,
    fang_trim,
    load_colluders,
    min_max,
    min_sum,
    qv_orthogonal,
    resolve_side,
    sybil_rows,
)
from flwr_byz.attacks.colluders import defence_aggregate, flat_gradient
from flwr_byz.data import load_partition, load_server_data
from flwr_byz.records import ModelLayout

REPO = Path(__file__).resolve().parents[1]
DATA = {"dataset": "yelp-style", "samples-per-region": 60, "seed": 0}
NUM = 5
COLLUDING = [0, 1]
HONEST = [2, 3, 4]


# --- a real model on real data, and the injector in front of a recording strategy


@pytest.fixture(scope="module")
def colluders():
    return load_colluders(DATA, COLLUDING, NUM)


@pytest.fixture(scope="module")
def world(colluders):
    """The model at its initial weights, the layout, and every partition's true
    update (one full-batch SGD step, lr 0.5: this app's honest recipe)."""
    torch.manual_seed(0)
    model = colluders.model_factory()
    theta = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    layout = ModelLayout.from_arrays(theta)
    updates = {}
    for pid in range(NUM):
        train = load_partition(DATA, pid, NUM).train
        grad = flat_gradient(model, layout, train.features, train.labels)
        updates[pid] = -0.5 * grad
    return model, theta, layout, updates


class Recorder(Strategy):
    """A defence stand-in: sends the prepared train messages and keeps what it
    would aggregate."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.received: dict[int, Message] = {}

    def configure_train(self, server_round, arrays, config, grid) -> Iterable[Message]:
        return list(self.messages)

    def aggregate_train(self, server_round, replies):
        self.received = {r.metadata.src_node_id: r for r in replies}
        return None, None

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []

    def aggregate_evaluate(self, server_round, replies):
        return None

    def summary(self) -> None:
        pass


def _metadata(src: int, dst: int) -> Metadata:
    return Metadata(
        run_id=1,
        message_id=f"{src}-{dst}",
        src_node_id=src,
        dst_node_id=dst,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )


def play(
    attack: str,
    theta: dict[str, np.ndarray],
    updates: dict[int, torch.Tensor],
    byzantine: list[int],
    rounds: Iterable[int] = (1,),
    colluders=None,
    **config,
) -> dict[int, dict[int, torch.Tensor]]:
    """Each round: node ``i`` replies ``theta + updates[i]``; the injector tampers
    the Byzantine ones. Returns round -> node -> the update the defence gets."""
    layout = ModelLayout.from_arrays(theta)
    flat_theta = layout.flatten(theta, np.float64)
    record = ArrayRecord({k: Array(v) for k, v in theta.items()})
    messages = [
        Message(RecordDict({"arrays": record}), metadata=_metadata(0, nid))
        for nid in updates
    ]
    recorder = Recorder(messages)
    injector = ServerSideAttack(
        recorder,
        attack,
        byzantine,
        seed=3,
        config={"strategy": "mean", **config},
        colluders=colluders,
    )
    out = {}
    for server_round in rounds:
        sent = injector.configure_train(server_round, record, ConfigRecord(), None)
        replies = []
        for msg in sent:
            nid = msg.metadata.dst_node_id
            w = layout.unflatten(flat_theta + updates[nid].numpy())
            arrays = ArrayRecord({k: Array(w[k].astype(theta[k].dtype)) for k in theta})
            content = RecordDict(
                {"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})}
            )
            replies.append(Message(content, metadata=_metadata(nid, 0)))
        injector.aggregate_train(server_round, replies)
        out[server_round] = {
            nid: torch.from_numpy(
                layout.flatten(
                    {k: v.numpy() for k, v in r.content["arrays"].items()}, np.float64
                )
                - flat_theta
            )
            for nid, r in recorder.received.items()
        }
    out["tampered"] = injector.tampered  # type: ignore[assignment]
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def _median_norm(updates: dict[int, torch.Tensor], nodes: list[int]) -> float:
    return float(torch.stack([updates[i].norm() for i in nodes]).median())


# --- qv-orthogonal


def test_qv_orthogonal_geometry_on_random_vectors() -> None:
    gen = torch.Generator().manual_seed(0)
    ascent = torch.randn(500, generator=gen, dtype=torch.float64)
    descent = torch.randn(500, generator=gen, dtype=torch.float64)
    v = qv_orthogonal(ascent, descent, epsilon=0.3, norm=2.5)
    q = descent / descent.norm()
    assert float(v.norm()) == pytest.approx(2.5)
    # Along QV descent: exactly the margin; the rest is orthogonal ascent.
    assert float(v @ q) / float(v.norm()) == pytest.approx(0.3 / math.sqrt(1.09))
    rest = v - (v @ q) * q
    assert _cos(rest, ascent - (ascent @ q) * q) == pytest.approx(1.0)
    zero_margin = qv_orthogonal(ascent, descent, epsilon=0.0, norm=1.0)
    assert abs(float(zero_margin @ q)) < 1e-12


def test_qv_orthogonal_on_the_model_is_identical_honest_sized_and_qv_neutral(
    colluders, world
) -> None:
    model, theta, layout, updates = world
    nodes = {pid: updates[pid] for pid in range(NUM)}
    got = play("qv-orthogonal", theta, nodes, COLLUDING, colluders=colluders, **DATA)[1]
    sent = [got[i] for i in COLLUDING]
    assert torch.equal(sent[0], sent[1])  # one identical vector
    for i in HONEST:  # honest replies pass through
        assert torch.allclose(got[i], updates[i], atol=1e-6)
    v = sent[0]
    assert float(v.norm()) == pytest.approx(_median_norm(updates, HONEST), rel=1e-4)
    # Against the colluders' own QV-descent direction: only the ε = 0.3 margin.
    qv_descent = -flat_gradient(model, layout, *colluders.qv)
    assert _cos(v, qv_descent) == pytest.approx(0.3 / math.sqrt(1.09), abs=1e-4)
    # ... and it climbs the colluders' loss: a small step raises it.
    x, y = colluders.own
    with torch.no_grad():
        before = float(F.cross_entropy(model(x), y))
    probe = colluders.model_factory()
    w = layout.unflatten(layout.flatten(theta, np.float64) + 0.5 * v.numpy())
    probe.load_state_dict({k: torch.from_numpy(w[k].astype(np.float32)) for k in w})
    with torch.no_grad():
        assert float(F.cross_entropy(probe(x), y)) > before


def test_the_colluders_never_hold_the_servers_qv_samples(colluders) -> None:
    server = load_server_data(DATA, NUM).qv.features
    mine = colluders.qv[0]
    assert mine.shape[0] == 200 and server.shape[0] == 10
    same = (mine[:, None, :] == server[None, :, :]).all(dim=2)
    assert not bool(same.any())
    # Same distribution: the held-out region's pool holds both.
    pool = load_server_data({**DATA, "qv-size": 1000}, NUM).qv.features
    assert bool((pool[:, None, :] == server[None, :, :]).all(dim=2).any(dim=0).all())


def test_target_class_outside_the_task_is_refused() -> None:
    with pytest.raises(ValueError, match=r"target-class=2 .*0\.\.1"):
        load_colluders({**DATA, "target-class": 2}, COLLUDING, NUM)


def test_data_attacks_without_colluders_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="colluders="):
        ServerSideAttack(Recorder([]), "qv-orthogonal", [1])
    with pytest.raises(ValueError, match="colluders="):
        ServerSideAttack(
            Recorder([]),
            "pretense-drift",
            [1],
            config={"drift-attack": "sybil", "sybil-base": "class-targeted"},
        )
    ServerSideAttack(
        Recorder([]), "pretense-drift", [1], config={"drift-attack": "ipm"}
    )


# --- class-targeted


def test_class_targeted_pushes_every_sample_to_the_target(colluders, world) -> None:
    _, theta, layout, updates = world
    got = play(
        "class-targeted",
        theta,
        dict(updates),
        COLLUDING,
        colluders=colluders,
        **{**DATA, "target-class": 1},
    )[1]
    v = got[COLLUDING[0]]
    assert torch.equal(v, got[COLLUDING[1]])
    assert float(v.norm()) == pytest.approx(_median_norm(updates, HONEST), rel=1e-4)
    x, _ = colluders.own
    probe = colluders.model_factory()
    flat = layout.flatten(theta, np.float64)
    shares = []
    for step in (0.0, 2.0):
        w = layout.unflatten(flat + step * v.numpy())
        probe.load_state_dict({k: torch.from_numpy(w[k].astype(np.float32)) for k in w})
        with torch.no_grad():
            logits = probe(x)
        shares.append(float(F.softmax(logits, dim=1)[:, 1].mean()))
    assert shares[1] > shares[0] + 0.01  # every sample leans to class 1


# --- sybils


def test_sybil_rows_identical_and_with_small_noise() -> None:
    v = torch.linspace(-1, 1, 1000, dtype=torch.float64)
    rows = sybil_rows(v, 4)
    assert all(torch.equal(rows[i], v) for i in range(4))
    noisy = sybil_rows(v, 4, noise=0.05, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(noisy[0], noisy[1])
    for row in noisy:
        assert float((row - v).norm() / v.norm()) == pytest.approx(0.05, rel=0.15)
        assert _cos(row, v) > 0.99


def test_sybil_by_name_sends_one_vector_sybil_noise_close_ones(world) -> None:
    _, theta, _, updates = world
    got = play("sybil", theta, dict(updates), COLLUDING)[1]
    a, b = (got[i] for i in COLLUDING)
    assert torch.equal(a, b)
    own_mean = (updates[0] + updates[1]) / 2
    assert _cos(a, own_mean) == pytest.approx(-1.0, abs=1e-6)  # base: sign flip
    assert float(a.norm()) == pytest.approx(_median_norm(updates, HONEST), rel=1e-4)
    noisy = play("sybil-noise", theta, dict(updates), COLLUDING)[1]
    a, b = (noisy[i] for i in COLLUDING)
    assert not torch.equal(a, b) and _cos(a, b) > 0.99


# --- Fang et al.


def _realistic_honest(h: int, d: int, seed: int) -> torch.Tensor:
    """Honest updates: a shared direction plus per-node noise of similar size."""
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=gen, dtype=torch.float64)
    return common + 0.8 * torch.randn((h, d), generator=gen, dtype=torch.float64)


def test_fang_krum_is_selected_by_krum_and_far_from_the_honest_mean() -> None:
    honest = _realistic_honest(7, 2000, 0)
    c, f = 3, 3
    crafted = fang_krum(honest, honest, c, f)
    x = torch.cat([honest, crafted.expand(c, -1)])
    assert krum(x, f).selected[0] >= 7  # Krum picks a colluder
    mean = honest.mean(dim=0)
    # Far: further from the honest mean than any honest update, and pointing
    # against the benign direction.
    assert float((crafted - mean).norm()) > float((honest - mean).norm(dim=1).max())
    assert _cos(crafted, mean) < -0.5


def test_fang_krum_by_name_uses_the_defences_f(world) -> None:
    _, theta, _, updates = world
    got = play(
        "fang-krum",
        theta,
        dict(updates),
        COLLUDING,
        **{"strategy": "krum", "assumed-byzantine-fraction": 0.2},
    )[1]
    v = got[COLLUDING[0]]
    honest = torch.stack([updates[i] for i in HONEST])
    x = torch.cat([honest, v.expand(2, -1)])
    assert krum(x, 1).selected[0] >= 3
    assert _cos(v, honest.mean(dim=0)) < 0


def test_fang_trim_lies_beyond_every_benign_value_against_its_direction() -> None:
    benign = _realistic_honest(8, 500, 1)
    rows = fang_trim(benign, 4, torch.Generator().manual_seed(0))
    s = torch.sign(benign.mean(dim=0))
    hi, lo = benign.max(dim=0).values, benign.min(dim=0).values
    up = s <= 0
    assert bool((rows[:, up] >= hi[up]).all())
    assert bool((rows[:, ~up] <= lo[~up]).all())
    # Within the factor b = 2 of the extreme.
    assert bool((rows[:, up].abs() <= 2 * hi[up].abs() + 1e-12).all())
    # The trimmed mean (β = 0.25) moves against the benign direction.
    x = torch.cat([benign[:6], rows])
    shift = trimmed_mean(x, 0.25).aggregate - benign[:6].mean(dim=0)
    assert float((torch.sign(shift) == -s).double().mean()) > 0.9


# --- Shejwalkar & Houmansadr


def test_min_max_and_min_sum_stay_within_the_honest_spread() -> None:
    honest = _realistic_honest(7, 300, 2)
    pair = torch.cdist(honest, honest)
    v = min_max(honest)
    assert float(torch.cdist(v[None], honest).max()) <= float(pair.max()) + 1e-9
    assert float((v - honest.mean(dim=0)).norm()) > 0.1  # it does deviate
    w = min_sum(honest)
    sums = (pair**2).sum(dim=1)
    assert float((torch.cdist(w[None], honest) ** 2).sum()) <= float(sums.max()) + 1e-6


def _damage(aggregate, honest: torch.Tensor, v: torch.Tensor, c: int) -> float:
    out = aggregate(torch.cat([honest, v.expand(c, -1)]))
    return float((out - honest.mean(dim=0)).norm())


@pytest.mark.parametrize("rule", ["median", "trimmed-mean", "krum"])
def test_agr_tailored_maximises_the_damage_the_rule_lets_through(rule: str) -> None:
    honest = _realistic_honest(7, 200, 3)
    c = 3
    cfg = {"strategy": rule, "assumed-byzantine-fraction": 0.3}
    aggregate = defence_aggregate(cfg, 10)
    assert aggregate is not None
    v = agr_tailored(honest, c, aggregate, "std")
    best = _damage(aggregate, honest, v, c)
    mean = honest.mean(dim=0)
    std = honest.std(dim=0, correction=0)
    sweep = [
        _damage(aggregate, honest, mean - g * std, c)
        for g in np.linspace(0.0, 60.0, 61)
    ]
    assert best >= 0.97 * max(sweep)
    assert best > _damage(aggregate, honest, mean, c) + 1e-3  # it hurts
    if rule == "median":  # the rule itself: what the registry runs
        got = coordinate_median(torch.cat([honest, v.expand(c, -1)])).aggregate
        assert float((got - mean).norm()) == pytest.approx(best)


def test_agr_tailored_by_name_runs_the_defences_rule(world) -> None:
    _, theta, _, updates = world
    cfg = {"strategy": "median", "assumed-byzantine-fraction": 0.2}
    got = play("agr-tailored", theta, dict(updates), COLLUDING, **cfg)[1]
    v = got[COLLUDING[0]]
    honest = torch.stack([updates[i] for i in HONEST])
    aggregate = defence_aggregate(cfg, 5)
    expected = agr_tailored(honest, 2, aggregate, "std")
    assert torch.allclose(v, expected, atol=1e-6)


def test_fltrust_and_zeno_are_run_with_the_colluders_own_qv_samples(
    colluders, world
) -> None:
    from flwr_byz.aggregation import fltrust
    from flwr_byz.attacks.colluders import imitated_update

    model, _, layout, updates = world
    x = torch.stack([updates[i] for i in range(NUM)])
    assert defence_aggregate({"strategy": "fltrust"}, NUM) is None  # no data: none
    fl = defence_aggregate({"strategy": "fltrust"}, NUM, colluders, model, layout)
    server = imitated_update(colluders, model, layout)
    # The imitation is one honest step on the colluders' QV samples.
    expected = -0.5 * flat_gradient(model, layout, *colluders.qv)
    assert torch.allclose(server, expected, atol=1e-9)
    assert torch.allclose(fl(x), fltrust(x, server).aggregate)
    zeno_cfg = {"strategy": "zeno", "zeno-b-fraction": 0.4}
    ze = defence_aggregate(zeno_cfg, NUM, colluders, model, layout)
    out = ze(x)  # Zeno keeps the n − b = 3 best-scored updates: their mean
    subsets = [
        x[list(rows)].mean(dim=0) for rows in itertools.combinations(range(NUM), 3)
    ]
    assert any(torch.allclose(out, m, atol=1e-9) for m in subsets)
    assert defence_aggregate({"strategy": "gaa"}, NUM, colluders, model, layout) is None


# --- pretense then drift


def test_drift_weight_schedule() -> None:
    assert [drift_weight(r, 5, 5) for r in range(1, 13)] == [
        0,
        0,
        0,
        0,
        0,
        0.2,
        0.4,
        0.6,
        0.8,
        1.0,
        1.0,
        1.0,
    ]
    assert [drift_weight(r, 2, 0) for r in (1, 2, 3)] == [0, 0, 1.0]


def test_pretense_drift_is_honest_then_blends_then_attacks(world) -> None:
    _, theta, _, updates = world
    got = play(
        "pretense-drift",
        theta,
        dict(updates),
        COLLUDING,
        rounds=range(1, 6),
        **{"drift-honest-rounds": 2, "drift-blend-rounds": 2, "drift-attack": "ipm"},
    )
    honest = torch.stack([updates[i] for i in HONEST])
    inner = -0.5 * honest.mean(dim=0)  # IPM, ε = 0.5
    assert got["tampered"] == {1: [], 2: [], 3: COLLUDING, 4: COLLUDING, 5: COLLUDING}
    for r, t in ((1, 0.0), (2, 0.0), (3, 0.5), (4, 1.0), (5, 1.0)):
        for i in COLLUDING:
            expected = (1 - t) * updates[i] + t * inner
            assert torch.allclose(got[r][i], expected, atol=1e-6), (r, i)


# --- names: run config, grid, grid file


@pytest.mark.parametrize("name", ADAPTIVE_ATTACKS)
def test_each_name_is_a_server_side_attack_of_the_run_config(name: str) -> None:
    from flwr_byz.app.config import check_run_config

    cfg = check_run_config({"attack": name, "byzantine-fraction": 0.3})
    assert resolve_side(cfg) == "server"
    with pytest.raises(ValueError, match="attack-side"):
        check_attack_config({"attack": name, "attack-side": "client"})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("qv-epsilon", -0.1),
        ("colluder-qv-size", 0),
        ("drift-honest-rounds", -1),
        ("drift-blend-rounds", 1.5),
        ("drift-attack", "pretense-drift"),
        ("target-class", -1),
        ("sybil-base", "sybil"),
        ("sybil-noise", float("nan")),
        ("fang-trim-b", 0.5),
    ],
)
def test_bad_parameters_are_named(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        check_attack_config({"attack": "qv-orthogonal", key: value})


def test_the_grid_takes_every_name_and_the_grid_file_covers_every_defence() -> None:
    from flwr_byz.app.config import STRATEGY_NAMES
    from flwr_byz.experiments.grid import GridSpec, check_grid
    from flwr_byz.experiments.grid_file import load_grid_file

    cells = check_grid(GridSpec.of(["gaa", "krum"], list(ADAPTIVE_ATTACKS), [0.3], [0]))
    assert {c.config["attack"] for c in cells} == set(ADAPTIVE_ATTACKS)
    grid = load_grid_file(REPO / "flwr_byz/experiments/grids/adaptive.toml")
    cells = check_grid(grid.spec)
    attacked = [c for c in cells if c.config["attack"] != "none"]
    assert {c.config["attack"] for c in attacked} >= set(ADAPTIVE_ATTACKS) | {
        "min-max",
        "min-sum",
    }
    assert {c.config["strategy"] for c in attacked} == set(STRATEGY_NAMES)
    assert {c.config["byzantine-fraction"] for c in attacked} == {0.3, 0.7}
    assert any(c.config["attack"] == "none" for c in cells)  # the reference


# --- the app, by name, end to end


def _app_run(cfg: dict, tmp: Path) -> dict:
    """The app's ServerApp ``run`` with its real ClientApp on every node, over
    Flower's in-memory LinkState and grid."""
    from flwr.app import Context
    from link_federation import LinkFederation

    import clients.client_app as client_module
    from flwr_byz.app.config import check_run_config
    from flwr_byz.app.server_run import run_server

    cfg = check_run_config({**cfg, "output-dir": str(tmp / "out")})
    with LinkFederation(NUM, lambda m: None) as fed:
        for pid, nid in enumerate(fed.node_ids):
            context = Context(
                run_id=1,
                node_id=nid,
                node_config={"partition-id": pid, "num-partitions": NUM},
                state=RecordDict(),
                run_config=cfg,
            )
            fed.behaviours[nid] = lambda msg, context=context: client_module.app(
                msg, context
            )
        return run_server(fed.grid, cfg)


def _config(name: str, strategy: str) -> dict:
    return {
        **DATA,
        "attack": name,
        "strategy": strategy,
        "assumed-byzantine-fraction": 0.2,
        "byzantine-fraction": 0.4,
        "num-server-rounds": 2,
        "drift-honest-rounds": 1,
        "drift-blend-rounds": 0,
    }


def _check_run(results: dict, name: str) -> list[dict]:
    assert results["status"] == "completed"
    assert results["config"]["attack"] == name
    assert len(results["ground-truth"]["byzantine-partition-ids"]) == 2
    rounds = [r for r in results["rounds"] if r["round"] > 0]
    assert len(rounds) == 2 and all(0 <= r["accuracy"] <= 1 for r in rounds)
    return rounds


@pytest.mark.slow
@pytest.mark.parametrize("name", ADAPTIVE_ATTACKS)
def test_each_name_runs_in_the_app(name: str, tmp_path: Path) -> None:
    strategy = {"fang-krum": "krum", "fang-trim": "trimmed-mean"}.get(name, "gaa")
    results = _app_run(_config(name, strategy), tmp_path)
    rounds = _check_run(results, name)
    if name == "fang-krum":  # the app's Krum selects a colluder every round
        byzantine = set(results["ground-truth"]["byzantine-partition-ids"])
        for r in rounds:
            assert set(r["selected-partitions"]) <= byzantine, r


@pytest.mark.slow
def test_qv_orthogonal_by_name_in_the_flower_simulation_engine(tmp_path: Path) -> None:
    """The app's ServerApp and ClientApp under ``run_simulation`` (Ray), the attack
    chosen by its name in the run config."""
    from flwr.app import Context
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    import clients.client_app as client_module
    from flwr_byz.app.config import check_run_config
    from flwr_byz.app.server_run import run_server

    cfg = check_run_config(
        {**_config("qv-orthogonal", "gaa"), "output-dir": str(tmp_path / "out")}
    )
    out: dict = {}
    server = ServerApp()

    @server.main()
    def main(grid, context) -> None:
        out["results"] = run_server(grid, cfg)

    client = ClientApp()

    def forward(msg: Message, context: Context) -> Message:
        # The simulation's run config is empty: hand the app the cell's.
        ctx = Context(
            run_id=context.run_id,
            node_id=context.node_id,
            node_config=context.node_config,
            state=context.state,
            run_config=cfg,
        )
        return client_module.app(msg, ctx)

    client.train()(forward)
    client.evaluate()(forward)
    client.query()(forward)
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=NUM,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    _check_run(out["results"], "qv-orthogonal")
