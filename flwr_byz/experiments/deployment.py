"""Deprecated path of :mod:`flwr_byz.deploy.deployment`, kept for one release.

``python -m flwr_byz.experiments.deployment ...`` warns (on stderr) and runs
``python -m flwr_byz.deploy.deployment ...``; importing this module warns and gives
the names of :mod:`flwr_byz.deploy.deployment`.
"""

from __future__ import annotations

import sys
import warnings

from flwr_byz.deploy.deployment import *  # noqa: F403
from flwr_byz.deploy.deployment import __all__, main  # noqa: F401

_NEW = "flwr_byz.deploy.deployment"
_HOW = f"python -m {_NEW}" if __name__ == "__main__" else _NEW
warnings.warn(
    f"flwr_byz.experiments.deployment is deprecated; use {_HOW}",
    FutureWarning,
    stacklevel=2,
)

if __name__ == "__main__":
    sys.exit(main())
