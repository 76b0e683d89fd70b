"""Experiments: grid runner, tables, plots, a local SuperLink, deployment, CLI.

The app's own wiring is in :mod:`flwr_byz.app`; benchmarks in ``benchmarks/``.
"""
