"""Experiments: run configuration, result store, benchmarks, grid runner and CLI."""
