"""This repository's Flower app, as a library: its wiring, not its entry points.

``server/server_app.py`` and ``clients/client_app.py`` (the app's thin entry points,
``flwr run .``) build on these modules:

- :mod:`~flwr_byz.app.server_run`: the ServerApp's run
  (:func:`~flwr_byz.app.server_run.run_server`, a
  call a test can make with its own ``Grid``), :mod:`~flwr_byz.app.roster` (who is
  in the run, who is Byzantine) and :mod:`~flwr_byz.app.episodes` (GAA's episodes;
  what ends every round: evaluation, checkpoint, fault injection);
- :mod:`~flwr_byz.app.client_run`: the ClientApp's train, evaluate and query
  handlers, on :mod:`~flwr_byz.app.client_data` (what a node trains on);
- :mod:`~flwr_byz.app.config`: every run-config key, its default and its check;
- :mod:`~flwr_byz.app.strategy_factory`: run config → strategy;
- :mod:`~flwr_byz.app.federation`: who is in the federation (node id → partition);
- :mod:`~flwr_byz.app.liveness`: how many connected nodes a round waits for;
- :mod:`~flwr_byz.app.observed_strategy`, :mod:`~flwr_byz.app.round_log`,
  :mod:`~flwr_byz.app.results`, :mod:`~flwr_byz.app.detection`: what each round
  decided, written to ``results.json`` with the ground truth;
- :mod:`~flwr_byz.app.checkpoint`: ``checkpoint.pt`` after every round, and
  ``resume``: an interrupted run goes on bit for bit;
- :mod:`~flwr_byz.app.central_evaluation`, :mod:`~flwr_byz.app.training`: the
  server's evaluation and the clients' local training.

An existing Flower app needs none of this: it imports ``flwr_byz.strategy`` and
``flwr_byz.attacks``.
"""
