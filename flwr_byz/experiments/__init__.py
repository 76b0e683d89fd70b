"""Experiments: the grid runner, grid files, tables, plots and the CLI.

The app's own wiring is in :mod:`flwr_byz.app`; benchmarks in ``benchmarks/``.
"""
