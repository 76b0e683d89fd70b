"""The papers' models: shapes, sizes (GAA Appendix A.3), activations, determinism."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from flwr_byz.models import MODELS, build_model


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "features", "classes", "params", "activation"),
    [
        # GAA Appendix A.3: Yelp 1024-10-2 and Healthcare 1024-32-10 (sigmoid),
        # MNIST 784-30-10 (ReLU).
        ("mlp-yelp", 1024, 2, 1024 * 10 + 10 + 10 * 2 + 2, nn.Sigmoid),
        ("mlp-healthcare", 1024, 10, 1024 * 32 + 32 + 32 * 10 + 10, nn.Sigmoid),
        ("mlp-mnist", 784, 10, 784 * 30 + 30 + 30 * 10 + 10, nn.ReLU),
    ],
)
def test_mlp_shapes(
    name: str, features: int, classes: int, params: int, activation: type
) -> None:
    model = build_model(name, features, classes, seed=0)
    assert _count(model) == params
    assert any(isinstance(m, activation) for m in model.modules())
    out = model(torch.randn(5, features))
    assert out.shape == (5, classes)
    assert out.dtype == torch.float32


def test_auto_picks_the_papers_mlp() -> None:
    assert _count(build_model("auto", 1024, 2)) == _count(
        build_model("mlp-yelp", 1024, 2)
    )
    assert _count(build_model("auto", 1024, 10)) == _count(
        build_model("mlp-healthcare", 1024, 10)
    )


@pytest.mark.parametrize(("features", "channels"), [(784, 1), (3072, 3)])
def test_lenet_takes_flat_images(features: int, channels: int) -> None:
    model = build_model("lenet", features, 10, seed=1)
    assert model[0][1].in_channels == channels
    assert model(torch.randn(3, features)).shape == (3, 10)


def test_lenet_rejects_non_image_features() -> None:
    with pytest.raises(ValueError, match="num_features=1000"):
        build_model("lenet", 1000, 10)


def test_seed_gives_identical_weights_without_touching_global_rng() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("mlp-yelp", 64, 2, seed=5)
    b = build_model("mlp-yelp", 64, 2, seed=5)
    assert torch.equal(torch.rand(1), expected_next)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    c = build_model("mlp-yelp", 64, 2, seed=6)
    assert not torch.equal(a[0].weight, c[0].weight)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        build_model("vgg", 10, 2)
    assert "vgg" in str(err.value)
    assert all(name in str(err.value) for name in MODELS)


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="vision extra installed"
)
def test_resnet18_without_vision_extra_says_how_to_install() -> None:
    with pytest.raises(ImportError, match=r"pip install 'flwr-byz\[vision\]'"):
        build_model("resnet18", 3072, 10)


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="needs the vision extra"
)
def test_resnet18_on_cifar_shape() -> None:
    model = build_model("resnet18", 3072, 10, seed=0)
    assert model(torch.randn(2, 3072)).shape == (2, 10)
