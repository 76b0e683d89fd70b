"""This repository's ClientApp (``flwr run .``): the entry point only.

Every message goes through :func:`flwr_byz.attacks.byzantine_mod` (honest unless
the run config's attack keys say otherwise); the work itself is
:mod:`flwr_byz.app.client_run`.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flwr_byz.app import client_run
from flwr_byz.attacks import byzantine_mod

app = ClientApp(mods=[byzantine_mod(attack="none")])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global weights, train locally, reply the new weights."""
    return client_run.train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received weights on the node's local test split."""
    return client_run.evaluate(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (experiment bookkeeping)."""
    return client_run.query(msg, context)
