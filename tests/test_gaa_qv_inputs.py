"""QV sets and model factories as Flower users hold them (GAA, FLTrust, Zeno).

Every accepted form of a QV set gives the QV loss of the ``(x, y)`` tensor form;
every refusal happens at construction, with a message that says what to pass.
"""

from __future__ import annotations

import functools

import datasets
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from flwr_byz.gaa import QVObjective, TrustedWorker, qv_tensors

F, C, M = 5, 3, 7


class Net(nn.Module):
    """A user's model class, as in Flower's quickstarts."""

    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(F, hidden), nn.Linear(hidden, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class NetNeedsWidth(Net):
    def __init__(self, hidden: int) -> None:
        super().__init__(hidden)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(M, F, generator=g), torch.randint(0, C, (M,), generator=g)


class DictSamples(Dataset):
    """A Dataset of dict samples (Flower's and Hugging Face's column names)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, kx: str, ky: str) -> None:
        self.x, self.y, self.kx, self.ky = x, y, kx, ky

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {self.kx: self.x[i], self.ky: int(self.y[i])}


def theta() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.cat([v.reshape(-1) for v in Net().state_dict().values()])


def hf_dataset(x: torch.Tensor, y: torch.Tensor) -> datasets.Dataset:
    """A Hugging Face dataset in torch format, as ``flwr_datasets`` partitions are."""
    return datasets.Dataset.from_dict({"img": x.tolist(), "label": y.tolist()})


def flower_quickstart_partition(x: torch.Tensor, y: torch.Tensor) -> datasets.Dataset:
    """Flower's quickstart-pytorch: a partition ``with_transform`` into tensors."""

    def apply_transforms(batch: dict) -> dict:
        batch["img"] = [torch.tensor(v) for v in batch["img"]]
        return batch

    return hf_dataset(x, y).with_transform(apply_transforms)


def flower_quickstart_loader(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    """Then ``DataLoader(partition, batch_size=...)``: batches are dicts."""
    return DataLoader(flower_quickstart_partition(x, y), batch_size=3)


def accepted_forms() -> dict[str, tuple[object, object, list[int]]]:
    """name -> (qv_set, qv_keys, indices of (x, y) it holds)."""
    x, y = data()
    every = list(range(M))
    tensor_ds = TensorDataset(x, y)
    dict_ds = DictSamples(x, y, "img", "label")
    return {
        "tensors": ((x, y), None, every),
        "tensor-dataset": (tensor_ds, None, every),
        "subset": (Subset(tensor_ds, [4, 0, 2]), None, [4, 0, 2]),
        "dataloader-tuples": (DataLoader(tensor_ds, batch_size=3), None, every),
        "dataloader-dicts-img-label": (DataLoader(dict_ds, batch_size=3), None, every),
        "dataloader-dicts-image-labels": (
            DataLoader(DictSamples(x, y, "image", "labels"), batch_size=2),
            None,
            every,
        ),
        "dataloader-dicts-x-y": (
            DataLoader(DictSamples(x, y, "x", "y"), batch_size=4),
            None,
            every,
        ),
        "dataset-of-dicts": (dict_ds, None, every),
        "subset-of-dicts": (Subset(dict_ds, [1, 5]), None, [1, 5]),
        "dict-one-unknown-input-key": (
            DataLoader(DictSamples(x, y, "pixels", "label"), batch_size=3),
            None,
            every,
        ),
        "dataloader-dicts-named-keys": (
            DataLoader(DictSamples(x, y, "pixel_values", "fine_label"), batch_size=3),
            ("pixel_values", "fine_label"),
            every,
        ),
        "columns-mapping": ({"image": x, "label": y}, None, every),
        "huggingface-dataset": (hf_dataset(x, y).with_format("torch"), None, every),
        "flower-quickstart-partition": (flower_quickstart_partition(x, y), None, every),
        "flower-quickstart-dataloader": (flower_quickstart_loader(x, y), None, every),
        "triples-named-positions": (
            DataLoader(TensorDataset(x, torch.zeros(M), y), batch_size=3),
            (0, 2),
            every,
        ),
    }


@pytest.mark.parametrize("name", list(accepted_forms()))
def test_every_accepted_form_gives_the_tensor_forms_qv_loss(name: str) -> None:
    qv_set, keys, idx = accepted_forms()[name]
    x, y = data()
    xx, yy = qv_tensors(qv_set, keys)
    torch.testing.assert_close(xx, x[idx], rtol=1e-6, atol=1e-6)
    assert torch.equal(yy, y[idx])
    want = QVObjective(Net, (x[idx], y[idx]))(theta())
    got = QVObjective(Net, qv_set, qv_keys=keys)(theta())
    torch.testing.assert_close(got, want)


def test_trusted_worker_reads_dict_batches_with_named_keys() -> None:
    x, y = data()
    loader = DataLoader(DictSamples(x, y, "pixel_values", "fine_label"), batch_size=2)
    worker = TrustedWorker(Net, loader, keys=("pixel_values", "fine_label"))
    assert torch.equal(worker.x, x) and torch.equal(worker.y, y)


@pytest.mark.parametrize(
    ("qv_set", "keys", "message"),
    [
        # CIFAR-100 in flwr-datasets: two label columns, neither a common name.
        (
            {"img": torch.zeros(2, F), "fine_label": torch.zeros(2)},
            None,
            r"keys \['img', 'fine_label'\].*qv_keys=\(input_key, label_key\)",
        ),
        (
            DictSamples(*data(), "img", "fine_label"),
            None,
            r"sample 0 of the dataset is a dict with keys \['img', 'fine_label'\]",
        ),
        (
            DataLoader(DictSamples(*data(), "image", "img"), batch_size=3),
            None,
            r"batch 0 of the DataLoader is a dict with keys \['image', 'img'\]",
        ),
        (
            DataLoader(DictSamples(*data(), "img", "label"), batch_size=3),
            ("image", "label"),
            r"qv_keys=\('image', 'label'\): batch 0 of the DataLoader has no such "
            r"keys; it has \['img', 'label'\]",
        ),
        (
            DataLoader(TensorDataset(*data(), torch.zeros(M)), batch_size=3),
            None,
            r"batch 0 of the DataLoader holds 3 elements; need \(x, y\).*qv_keys",
        ),
        (torch.zeros(3, F), None, r"qv_set: got Tensor; allowed: \(x, y\) tensors"),
        ([1, 2, 3], None, r"qv_set: got list; allowed: \(x, y\) tensors"),
        ((torch.zeros(0, F), torch.zeros(0)), None, r"need >= 1 sample"),
        ((torch.zeros(3, F), torch.zeros(2)), None, r"shape \(3, 5\).*shape \(2,\)"),
        (DataLoader(TensorDataset(*data()), batch_size=3), "img", r"qv_keys: got"),
        (TensorDataset(torch.zeros(0, F), torch.zeros(0)), None, r"dataset is empty"),
    ],
    ids=[
        "unknown-label-key",
        "dataset-unknown-label-key",
        "two-input-keys",
        "named-keys-missing",
        "triples-without-keys",
        "bare-tensor",
        "list",
        "empty",
        "mismatched",
        "bad-qv-keys",
        "empty-dataset",
    ],
)
def test_refused_qv_sets_say_what_they_hold_and_what_to_pass(
    qv_set: object, keys: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        qv_tensors(qv_set, keys)


def test_a_pil_image_sample_asks_for_a_tensor_transform() -> None:
    pil = pytest.importorskip("PIL.Image")
    img = pil.new("RGB", (2, 2))
    with pytest.raises(ValueError, match=r"input of sample 0 is a Image.*ToTensor"):
        qv_tensors(_OneSample(img))


class _OneSample(Dataset):
    def __init__(self, img: object) -> None:
        self.img = img

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict:
        return {"img": self.img, "label": 0}


# ----------------------------------------------------------------- model_factory
@pytest.mark.parametrize(
    "factory",
    [Net, lambda: Net(6), functools.partial(NetNeedsWidth, 3)],
    ids=["class", "zero-argument-function", "partial"],
)
def test_a_class_or_zero_argument_function_builds_the_model(factory) -> None:
    objective = QVObjective(factory, data())
    assert isinstance(objective.model, Net)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (
            Net(),
            r"model_factory: got an instance of Net \(a torch.nn.Module\); pass what "
            r"builds a fresh model instead: the class \(model_factory=Net\) or a "
            r"zero-argument function \(model_factory=lambda: Net\(...\)\)",
        ),
        (
            "Net",
            r"model_factory: got str; allowed: a torch.nn.Module class or a "
            r"zero-argument function",
        ),
        (
            NetNeedsWidth,
            r"model_factory: NetNeedsWidth cannot be called without arguments "
            r"\(missing a required argument: 'hidden'\); pass a zero-argument "
            r"function, e.g. model_factory=lambda: NetNeedsWidth\(...\)",
        ),
        (lambda: {"fc": 1}, r"model_factory\(\) returned dict; allowed: a torch"),
    ],
    ids=["instance", "not-callable", "needs-arguments", "returns-no-module"],
)
def test_refused_model_factories_say_what_to_pass(factory, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QVObjective(factory, data())
    with pytest.raises(ValueError, match=message):
        TrustedWorker(factory, data())


# ----------------------------------------------------- through the strategies
def _strategies():
    from flwr_byz.strategy import GAA, FLTrust, Zeno

    return {
        "gaa": lambda **kw: GAA(**kw),
        "fltrust": lambda qv_set, **kw: FLTrust(root_set=qv_set, **kw),
        "zeno": lambda **kw: Zeno(num_malicious_nodes=1, **kw),
    }


@pytest.mark.parametrize("name", ["gaa", "fltrust", "zeno"])
def test_a_model_instance_is_refused_when_the_strategy_is_built(name: str) -> None:
    make = _strategies()[name]
    with pytest.raises(ValueError, match=r"instance of Net.*model_factory=Net"):
        make(model_factory=Net(), qv_set=data())


@pytest.mark.parametrize("name", ["gaa", "fltrust", "zeno"])
def test_strategies_take_flowers_quickstart_dataloader(name: str) -> None:
    make = _strategies()[name]
    x, y = data()
    strategy = make(model_factory=Net, qv_set=flower_quickstart_loader(x, y))
    objective = strategy.worker.objective if name == "fltrust" else None
    if name == "gaa":
        objective = strategy.agent.objective
    elif name == "zeno":
        objective = strategy.objective
    assert torch.equal(objective.x, x) and torch.equal(objective.y, y)


def test_gaa_qv_keys_name_the_columns_of_qv_and_trusted_data() -> None:
    from flwr_byz.strategy import GAA

    x, y = data()
    loader = DataLoader(DictSamples(x, y, "img", "fine_label"), batch_size=3)
    with pytest.raises(ValueError, match=r"keys \['img', 'fine_label'\]"):
        GAA(model_factory=Net, qv_set=loader)
    strategy = GAA(
        model_factory=Net,
        qv_set=loader,
        trusted_data=DictSamples(x[:4], y[:4], "img", "fine_label"),
        qv_keys=("img", "fine_label"),
    )
    agent = strategy.agent
    assert torch.equal(agent.objective.x, x) and torch.equal(agent.trusted.y, y[:4])
    want = QVObjective(Net, (x, y))(theta())
    torch.testing.assert_close(agent.objective(theta()), want)
