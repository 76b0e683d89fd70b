"""Deprecated path of :mod:`flwr_byz.deploy.deployment`, kept for one release:
``python -m flwr_byz.experiments.deployment`` warns on stderr and runs
``python -m flwr_byz.deploy.deployment``; an import warns and gives its names."""

from flwr_byz.deploy.deployment import *  # noqa: F403
from flwr_byz.deploy.deployment import __all__  # noqa: F401
from flwr_byz.experiments._moved import moved

moved("flwr_byz.experiments.deployment", "flwr_byz.deploy.deployment", __name__)
