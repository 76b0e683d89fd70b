"""Generated Yelp-style / Healthcare-style datasets: determinism, shift, QV region,
and the documented accuracy of the papers' MLPs (trained centrally and federated)."""

from __future__ import annotations

import pytest
import torch

from flwr_byz import data as byz_data
from flwr_byz.data.generated import (
    _task,
    generate_qv_pool,
    generate_region,
    region_prior,
)

# One worker runs this module under pytest-xdist: its module fixture is costly.
pytestmark = [
    pytest.mark.xdist_group("test_data_generated"),
    pytest.mark.usefixtures("one_torch_thread"),
]

YELP = {"dataset": "yelp-style", "seed": 3}
HEALTH = {"dataset": "healthcare-style", "seed": 3}


@pytest.fixture(scope="module")
def yelp_clients(one_torch_thread) -> list[byz_data.ClientData]:
    return _clients(YELP, 10)


@pytest.fixture(scope="module")
def yelp_server(one_torch_thread):
    return byz_data.load_server_data(YELP, 10)


def _paper_mlp(num_classes: int, seed: int = 0) -> torch.nn.Module:
    # DESIGN §7: 1024-10-2 (Yelp) and 1024-32-10 (Healthcare), sigmoid hidden.
    torch.manual_seed(seed)
    hidden = 10 if num_classes == 2 else 32
    return torch.nn.Sequential(
        torch.nn.Linear(1024, hidden),
        torch.nn.Sigmoid(),
        torch.nn.Linear(hidden, num_classes),
    )


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def _clients(cfg: dict, n: int) -> list[byz_data.ClientData]:
    return [byz_data.load_partition(cfg, i, n) for i in range(n)]


def _train_central(
    clients: list[byz_data.ClientData], num_classes: int
) -> torch.nn.Module:
    """Short fixed budget: Adam(lr=1e-3), batch 64, 2 epochs over the pooled data."""
    x = torch.cat([c.train.features for c in clients])
    y = torch.cat([c.train.labels for c in clients])
    model = _paper_mlp(num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def _same(a: byz_data.ClientData, b: byz_data.ClientData) -> bool:
    return all(
        torch.equal(getattr(a, s).features, getattr(b, s).features)
        and torch.equal(getattr(a, s).labels, getattr(b, s).labels)
        for s in ("train", "test")
    )


def test_shapes_and_sizes() -> None:
    assert byz_data.dataset_shape(YELP) == (1024, 2)
    assert byz_data.dataset_shape(HEALTH) == (1024, 10)
    client = byz_data.load_partition(YELP, 0, 10)
    assert client.train.features.dtype == torch.float32
    assert client.train.labels.dtype == torch.int64
    assert (len(client.train), len(client.test)) == (400, 100)
    server = byz_data.load_server_data(YELP, 10)
    assert server.qv.features.shape == (10, 1024)
    assert server.test.labels.bincount().tolist() == [500, 500]  # class-balanced
    assert (server.num_features, server.num_classes) == (1024, 2)


def test_same_seed_same_data_other_seed_other_data() -> None:
    assert _same(
        byz_data.load_partition(YELP, 4, 10), byz_data.load_partition(YELP, 4, 10)
    )
    s1, s2 = byz_data.load_server_data(YELP, 10), byz_data.load_server_data(YELP, 10)
    assert torch.equal(s1.qv.features, s2.qv.features)
    assert torch.equal(s1.test.features, s2.test.features)
    assert not _same(
        byz_data.load_partition(YELP, 4, 10),
        byz_data.load_partition({**YELP, "seed": 4}, 4, 10),
    )


def test_a_partition_does_not_depend_on_the_others() -> None:
    # Each region has its own stream: a client builds only its own region, and the
    # size of the federation does not change it.
    assert _same(
        byz_data.load_partition(YELP, 2, 10), byz_data.load_partition(YELP, 2, 50)
    )


def test_standardised_with_own_statistics() -> None:
    client = byz_data.load_partition(YELP, 1, 10)
    mean = client.train.features.mean(dim=0)
    std = client.train.features.std(dim=0, correction=0)
    assert mean.abs().max().item() < 1e-4
    assert (std - 1).abs().max().item() < 1e-3
    # The local test split uses the train statistics, so it is not exactly centred.
    assert client.test.features.mean(dim=0).abs().max().item() > 1e-3


def _half_distance(x: torch.Tensor) -> float:
    half = len(x) // 2
    return (x[:half].mean(0) - x[half:].mean(0)).norm().item()


def test_regions_differ_covariate_and_label_prior_shift() -> None:
    n = 600
    raw = [generate_region(byz_data.YELP_STYLE, 3, r, n) for r in range(4)]
    within = max(_half_distance(x) for x, _ in raw)
    # Covariate shift: region means are far apart compared with sampling noise.
    for a in range(4):
        for b in range(a + 1, 4):
            between = (raw[a][0].mean(0) - raw[b][0].mean(0)).norm().item()
            assert between > 3 * within, (a, b, between, within)
    # Label-prior shift: the positive share varies across the 10 regions.
    shares = [region_prior(byz_data.YELP_STYLE, 3, r)[1] for r in range(10)]
    assert max(shares) - min(shares) > 0.2
    # A class-conditional shift (which per-client standardisation cannot remove):
    # inside the class subspace, class-0 means relative to each region's mean differ
    # between regions far more than between two halves of one region.
    basis, _ = _task(byz_data.YELP_STYLE, 3)
    proj = []
    for r in (0, 1):
        x, y = generate_region(byz_data.YELP_STYLE, 3, r, 4000)
        z = (x.double() - x.double().mean(0)).numpy() @ basis
        proj.append(torch.from_numpy(z[(y == 0).numpy()]))
    between = (proj[0].mean(0) - proj[1].mean(0)).norm().item()
    assert between > 2 * max(_half_distance(z) for z in proj), between


def test_qv_region_is_no_clients_region(yelp_clients, yelp_server) -> None:
    pool, _ = generate_qv_pool(byz_data.YELP_STYLE, 3)
    within = _half_distance(pool)
    for r in range(30):
        x, _ = generate_region(byz_data.YELP_STYLE, 3, r, 200)
        assert (pool.mean(0) - x.mean(0)).norm().item() > 3 * within, r
    # The server's QV set is drawn from that pool, not from any client's data.
    for r in range(10):
        client = yelp_clients[r].train.features
        server = yelp_server
        dists = torch.cdist(server.qv.features, client)
        assert dists.min().item() > 1.0, r


def test_yelp_style_central_accuracy_in_band(yelp_clients, yelp_server) -> None:
    clients, server = yelp_clients, yelp_server
    acc = _accuracy(
        _train_central(clients, 2), server.test.features, server.test.labels
    )
    assert 0.80 <= acc <= 0.90, acc


def test_healthcare_style_central_accuracy_in_band() -> None:
    clients = _clients(HEALTH, 50)
    server = byz_data.load_server_data(HEALTH, 50)
    acc = _accuracy(
        _train_central(clients, 10), server.test.features, server.test.labels
    )
    assert 0.65 <= acc <= 0.80, acc


@pytest.mark.parametrize(("local_steps", "lr"), [(1, 0.3), (5, 0.1)])
def test_yelp_style_federated_from_random_init(
    local_steps: int, lr: float, yelp_clients, yelp_server
) -> None:
    """The app's main job: 10 honest clients, full-batch local SGD, mean of updates."""
    clients, server = yelp_clients, yelp_server
    model = _paper_mlp(2)
    start = _accuracy(model, server.test.features, server.test.labels)
    for _ in range(20):
        global_w = [p.detach().clone() for p in model.parameters()]
        deltas = []
        for c in clients:
            with torch.no_grad():
                for p, w in zip(model.parameters(), global_w, strict=True):
                    p.copy_(w)
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            for _ in range(local_steps):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(
                    model(c.train.features), c.train.labels
                )
                loss.backward()
                opt.step()
            deltas.append(
                [
                    p.detach() - w
                    for p, w in zip(model.parameters(), global_w, strict=True)
                ]
            )
        with torch.no_grad():
            for i, (p, w) in enumerate(zip(model.parameters(), global_w, strict=True)):
                p.copy_(w + torch.stack([d[i] for d in deltas]).mean(dim=0))
    acc = _accuracy(model, server.test.features, server.test.labels)
    assert start < 0.6
    assert acc >= 0.78, acc
