"""The papers' models (GAA Appendix A.3; FABA §4), built from flat feature vectors.

Every model takes a ``(batch, num_features)`` float tensor, the shape the federated
datasets of :mod:`flwr_byz.data` produce; the image models reshape it themselves
(784 -> 1x28x28, 3072 -> 3x32x32, any square -> 1xSxS).
"""

from __future__ import annotations

import math

import torch
from torch import nn

MODELS: tuple[str, ...] = (
    "auto",
    "mlp-yelp",
    "mlp-healthcare",
    "mlp-mnist",
    "lenet",
    "resnet18",
)

VISION_HINT = "pip install 'flwr-byz[vision]'"


def _mlp(num_features: int, hidden: int, num_classes: int, act: nn.Module) -> nn.Module:
    return nn.Sequential(
        nn.Linear(num_features, hidden), act, nn.Linear(hidden, num_classes)
    )


def _image_shape(num_features: int) -> tuple[int, int, int]:
    """(channels, side, side) of a flattened square image."""
    for channels in (1, 3):
        side = math.isqrt(num_features // channels)
        if num_features % channels == 0 and side * side * channels == num_features:
            return channels, side, side
    raise ValueError(
        f"num_features={num_features} is not a flattened square image "
        "(C*S*S with C in {1, 3}); image models need e.g. 784 (1x28x28) or "
        "3072 (3x32x32)"
    )


class _Unflatten(nn.Module):
    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


def _lenet(num_features: int, num_classes: int) -> nn.Module:
    shape = _image_shape(num_features)
    channels, side, _ = shape
    # LeNet-5 for MNIST pads the 28x28 input to 32x32 (its original input size).
    pad = 2 if side < 32 else 0
    features = nn.Sequential(
        _Unflatten(shape),
        nn.Conv2d(channels, 6, kernel_size=5, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = features(torch.zeros(1, num_features)).shape[1]
    return nn.Sequential(
        features,
        nn.Linear(flat, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def _resnet18(num_features: int, num_classes: int) -> nn.Module:
    try:
        from torchvision.models import resnet18
    except ImportError as err:  # the optional `vision` extra is not installed
        raise ImportError(f"model 'resnet18' needs torchvision: {VISION_HINT}") from err
    shape = _image_shape(num_features)
    net = resnet18(num_classes=num_classes)
    # CIFAR-style stem: 3x3 stride-1 convolution, no max-pool (32x32 inputs).
    net.conv1 = nn.Conv2d(shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return nn.Sequential(_Unflatten(shape), net)


def resolve_model_name(name: str, num_classes: int) -> str:
    """Resolve ``"auto"`` to a concrete model name.

    ``"auto"`` is the Yelp-style MLP for two classes and the Healthcare-style MLP
    otherwise; any other valid name is returned unchanged.
    """
    if name not in MODELS:
        raise ValueError(
            f"model={name!r} is not a known model; valid values: {', '.join(MODELS)}"
        )
    if name == "auto":
        return "mlp-yelp" if num_classes == 2 else "mlp-healthcare"
    return name


def build_model(
    name: str, num_features: int, num_classes: int, seed: int | None = None
) -> nn.Module:
    """Build one of the papers' models.

    Parameters
    ----------
    name : str
        One of :data:`MODELS`: ``"mlp-yelp"`` (F-10-C, sigmoid hidden),
        ``"mlp-healthcare"`` (F-32-C, sigmoid hidden), ``"mlp-mnist"`` (F-30-C, ReLU;
        784-30-10 on MNIST), ``"lenet"``, ``"resnet18"`` (needs the ``vision`` extra)
        or ``"auto"`` (``mlp-yelp`` for 2 classes, ``mlp-healthcare`` otherwise).
    num_features : int
        Length of one flat input vector.
    num_classes : int
        Number of output logits.
    seed : int, optional
        Seed for the initial weights. ``None`` draws from torch's global generator
        (seed it yourself for reproducibility); an int gives the same weights on
        every call without touching the global generator's state.

    Returns
    -------
    torch.nn.Module
        The model (float32, on CPU) mapping ``(batch, num_features)`` to
        ``(batch, num_classes)`` logits.
    """
    if num_features < 1 or num_classes < 2:
        raise ValueError(
            f"num_features={num_features} and num_classes={num_classes}: need "
            "num_features >= 1 and num_classes >= 2"
        )
    resolved = resolve_model_name(name, num_classes)
    if seed is None:
        return _build(resolved, num_features, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(resolved, num_features, num_classes)


def _build(name: str, num_features: int, num_classes: int) -> nn.Module:
    if name == "mlp-yelp":
        return _mlp(num_features, 10, num_classes, nn.Sigmoid())
    if name == "mlp-healthcare":
        return _mlp(num_features, 32, num_classes, nn.Sigmoid())
    if name == "mlp-mnist":
        return _mlp(num_features, 30, num_classes, nn.ReLU())
    if name == "lenet":
        return _lenet(num_features, num_classes)
    return _resnet18(num_features, num_classes)
