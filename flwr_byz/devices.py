"""The one device resolver: ``"auto"`` / ``"cpu"`` / ``"cuda[:N]"`` → torch device.

Used by the strategies (where a rule runs), the app's server (the server's model and
evaluation) and its clients (local training).
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """Map ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) or ``"auto"`` to a torch device.

    Raises
    ------
    ValueError
        For any other value, or ``"cuda"`` without a CUDA device.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} but CUDA is not available; "
                f"allowed values: {DEVICES}"
            )
        return torch.device(device)
    raise ValueError(f"device={device!r} is not one of {DEVICES} (or 'cuda:N')")
