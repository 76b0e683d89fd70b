"""Deployment: a real Flower federation over TLS, and the processes behind it.

- :mod:`~flwr_byz.deploy.deployment`: :class:`LocalDeployment` (a TLS SuperLink
  with SuperNode authentication, the Fleet gateway and registered SuperNodes on
  127.0.0.1) and the command ``python -m flwr_byz.deploy.deployment``;
- :mod:`~flwr_byz.deploy.certificates`: the CA, server certificate and SuperNode
  keys;
- :mod:`~flwr_byz.deploy.fleet_gateway`: the Fleet-only TLS gateway, the command
  ``python -m flwr_byz.deploy.fleet_gateway``;
- :mod:`~flwr_byz.deploy.local_superlink`: a private SuperLink in simulation mode
  (the experiment grid's);
- :mod:`~flwr_byz.deploy.processes`: free ports, starting, waiting for and
  stopping processes;
- :mod:`~flwr_byz.deploy.app_snapshot`: the copy of an app that ``flwr run`` is
  given, without the directories it would walk only to ignore them.

Nothing here imports :mod:`flwr_byz.experiments`.
"""
