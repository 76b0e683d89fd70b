"""flwr-byz rules for Flower's legacy strategy API (``aggregate_fit`` era)."""

from .legacy_robust import LegacyRobust, parameters_to_record

__all__ = ["LegacyRobust", "parameters_to_record"]
