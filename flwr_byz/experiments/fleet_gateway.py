"""Deprecated path of :mod:`flwr_byz.deploy.fleet_gateway`, kept for one release:
``python -m flwr_byz.experiments.fleet_gateway`` warns on stderr and runs
``python -m flwr_byz.deploy.fleet_gateway``; an import warns and gives its names."""

from flwr_byz.deploy.fleet_gateway import *  # noqa: F403
from flwr_byz.deploy.fleet_gateway import __all__  # noqa: F401
from flwr_byz.experiments._moved import moved

moved("flwr_byz.experiments.fleet_gateway", "flwr_byz.deploy.fleet_gateway", __name__)
