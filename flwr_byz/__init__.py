"""flwr-byz: Byzantine-robust federated learning for Flower."""

__version__ = "0.1.0"
