"""Benchmarks of flwr-byz (not part of the installed package).

Run from the repository root, e.g. ``python -m benchmarks.bench_aggregation``.
"""
