"""Deprecated path of :mod:`flwr_byz.deploy.fleet_gateway`, kept for one release.

``python -m flwr_byz.experiments.fleet_gateway ...`` warns (on stderr) and runs
``python -m flwr_byz.deploy.fleet_gateway ...``; importing this module warns and gives
the names of :mod:`flwr_byz.deploy.fleet_gateway`.
"""

from __future__ import annotations

import sys
import warnings

from flwr_byz.deploy.fleet_gateway import *  # noqa: F403
from flwr_byz.deploy.fleet_gateway import __all__, main  # noqa: F401

_NEW = "flwr_byz.deploy.fleet_gateway"
_HOW = f"python -m {_NEW}" if __name__ == "__main__" else _NEW
warnings.warn(
    f"flwr_byz.experiments.fleet_gateway is deprecated; use {_HOW}",
    FutureWarning,
    stacklevel=2,
)

if __name__ == "__main__":
    sys.exit(main())
