"""This repository's ServerApp (``flwr run .``): the entry point only.

The run itself (run config → data, model, strategy → rounds → results,
checkpoints and ``resume``) is :func:`flwr_byz.app.server_run.run_server`.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flwr_byz.app.server_run import serve

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Validate the run config, run the rounds, write results, print a summary."""
    serve(grid, context)
