"""FLTrust and Zeno against a sign-flip majority in Flower's simulation engine.

10 supernodes, each its own region of a small generated task (MLP 32-10-2,
sigmoid hidden), one full-batch SGD step per round (Δ = −λ g). Seven of the ten
send the honest update with its sign flipped (Δ = +λ g). FedAvg's mean then
climbs the loss; FLTrust, trusting only updates that point like its own update
on its root dataset, must hold. One simulation runs FedAvg without attack (the
reference), FedAvg, FLTrust and Zeno under the attack.

The root dataset follows FLTrust's assumption (Cao et al. §4: ~100 samples drawn
like the clients' data): 10 fresh samples of each client region. With 10 samples
of an *unseen* region instead, the server's first gradient is dominated by that
region's label imbalance, points against the three honest ones, and trust
flip-flops between the two groups every round (accuracy stays ~50 %).
"""

from __future__ import annotations

import pytest
import simulation_helpers as sim
import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from flwr_byz.strategy import FLTrust, Zeno

# One worker runs this module under pytest-xdist: its module fixture is costly.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_fltrust_zeno_simulation")]

NUM_NODES = 10
BYZANTINE = frozenset(range(3, 10))  # partition ids: β = 0.7
ROUNDS = 30


def root_set() -> tuple[torch.Tensor, torch.Tensor]:
    """10 samples per client region that no client trains on (rows 200..209)."""
    parts = [sim.region(k, 210) for k in range(NUM_NODES)]
    return (
        torch.cat([x[200:] for x, _ in parts]),
        torch.cat([y[200:] for _, y in parts]),
    )


ROOT = root_set()

client = sim.client_app()


@client.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    attack = str(msg.content["config"].get("attack", "none"))
    net, metrics = sim.region_gradient(msg, pid)
    sign = -1.0 if (attack == "sign-flip" and pid in BYZANTINE) else 1.0
    with torch.no_grad():
        for p in net.parameters():
            p -= sign * sim.LR * p.grad
    return sim.train_reply(msg, ArrayRecord(net.state_dict()), metrics)


@pytest.fixture(scope="module")
def simulation() -> dict:
    def run_all(grid: Grid, seen: dict) -> None:
        initial = sim.initial_model()
        runs = {
            "clean": (FedAvg(fraction_evaluate=0.0), "none"),
            "fedavg": (FedAvg(fraction_evaluate=0.0), "sign-flip"),
            "fltrust": (
                FLTrust(
                    model_factory=sim.model,
                    root_set=ROOT,
                    trusted_lr=sim.LR,
                    fraction_evaluate=0.0,
                    seed=0,
                ),
                "sign-flip",
            ),
            "zeno": (
                Zeno(
                    model_factory=sim.model,
                    qv_set=ROOT,
                    num_malicious_nodes=7,
                    rho=5e-4 / sim.LR**2,
                    batch_size=4,
                    fraction_evaluate=0.0,
                    seed=0,
                ),
                "sign-flip",
            ),
        }
        for name, (strategy, attack) in runs.items():
            seen[name] = sim.start(strategy, grid, initial, ROUNDS, {"attack": attack})

    return sim.simulate(client, NUM_NODES, run_all)


def test_fltrust_holds_where_fedavg_falls(simulation):
    clean = sim.accuracy(simulation["clean"].arrays)
    fedavg = sim.accuracy(simulation["fedavg"].arrays)
    fltrust = sim.accuracy(simulation["fltrust"].arrays)
    zeno = sim.accuracy(simulation["zeno"].arrays)
    print(
        f"accuracy: FedAvg no attack {clean:.4f}, under a 70 % sign flip: "
        f"FedAvg {fedavg:.4f}, FLTrust {fltrust:.4f}, Zeno {zeno:.4f}"
    )
    assert clean >= 0.7  # the task is learnable
    assert fedavg <= clean - 0.15  # the attack works on the undefended mean
    assert fltrust >= clean - 0.05  # FLTrust holds


def test_fltrust_suspects_the_flippers_and_reports_trust(simulation):
    partition = simulation["partition"]
    result = simulation["fltrust"]
    caught, masses = 0, []
    for r in range(1, ROUNDS + 1):
        m = result.train_metrics_clientapp[r]
        assert m["status"] == 0
        assert len(m["scores"]) == len(m["node-ids"]) == NUM_NODES
        trust = dict(zip(m["node-ids"], m["scores"], strict=True))
        flipped = {n for n in trust if partition[n] in BYZANTINE}
        honest_mass = sum(t for n, t in trust.items() if n not in flipped)
        flipped_mass = sum(trust[n] for n in flipped)
        masses.append((round(honest_mass, 2), round(flipped_mass, 2)))
        caught += set(m["suspected-node-ids"]) >= flipped
    print("trust mass (honest, flipped) per round:", masses, "caught:", caught)
    # 3 honest updates outweigh 7 flipped ones in every round ...
    assert all(h > f for h, f in masses)
    # ... and every flipper gets zero trust in most rounds
    assert caught >= ROUNDS * 2 // 3


def test_zeno_reports_its_scores_and_suspects(simulation):
    result = simulation["zeno"]
    for r in range(1, ROUNDS + 1):
        m = result.train_metrics_clientapp[r]
        assert len(m["suspected-node-ids"]) == 7
        assert len(m["scores"]) == NUM_NODES and m["zeno-batch-size"] == 4
