"""A real Flower deployment on 127.0.0.1: TLS, SuperNode auth, a Fleet-only gateway.

Simulation (:mod:`flwr_byz.deploy.local_superlink`) runs every ClientApp
inside the SuperLink's Ray backend. A deployment is what runs across machines:
``flower-superlink`` serves the Fleet, Control and Runtime APIs over HTTPS on one
listener, each ``flower-supernode`` connects with the CA certificate and its own
registered key, pulls the app (FAB) for a run and starts the ClientApp for every
message, and ``flwr run`` submits the run through a named connection in
``$FLWR_HOME/config.toml``.

Secure by default, as the threat model (docs/deployment.md) asks:

* ``--enable-supernode-auth``: only SuperNodes whose public key the operator
  registered (``flwr supernode register``) may join; the CA certificate is public
  and admits nobody.
* The SuperLink listens on 127.0.0.1 only, so its Control API (run, list and stop
  runs; register SuperNodes) and Runtime API are out of the SuperNodes' reach;
  SuperNodes connect to :mod:`~flwr_byz.deploy.fleet_gateway`, which forwards
  the Fleet API and nothing else.

:class:`LocalDeployment` starts all of it on this machine, on free ports, each
process in its own process group, and stops them by PID.

By hand::

    python -m flwr_byz.deploy.deployment --nodes 4 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flwr_byz.deploy.app_snapshot import app_snapshot
from flwr_byz.deploy.certificates import (
    Certificates,
    KeyMaterialExistsError,
    SuperNodeKeys,
    connection_toml,
    make_certificates,
    make_supernode_keys,
    write_new_file,
)
from flwr_byz.deploy.fleet_gateway import (
    DEFAULT_MAX_REQUESTS_PER_PEER,
    body_limit,
    command_line,
)
from flwr_byz.deploy.local_superlink import run_config_arg
from flwr_byz.deploy.processes import (
    free_port,
    kill_now,
    log_tail,
    port_is_free,
    spawn,
    stop_processes,
    wait_until_healthy,
)

__all__ = [
    "CONNECTION",
    "Certificates",
    "LocalDeployment",
    "SuperNodeKeys",
    "connection_toml",
    "main",
    "make_certificates",
    "make_supernode_keys",
    "register_supernode",
    "stop_processes",
]

CONNECTION = "local-tls"

#: Starts of the SuperLink or gateway, each on a fresh port after a port was taken.
START_ATTEMPTS = 3
#: Runs of ``flwr supernode register`` that time out before it gives up.
REGISTER_ATTEMPTS = 3
#: Seconds :meth:`LocalDeployment.node_ids` waits for every SuperNode to join: a
#: SuperNode joins in seconds, several times that on a loaded machine.
JOIN_TIMEOUT = 120.0

# The directory holding this flwr_byz, for ``python -m`` in child processes
# (an editable install may point elsewhere).
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def register_supernode(
    public_key: str | Path,
    connection: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    attempts: int = REGISTER_ATTEMPTS,
    flwr: str | Path | None = None,
) -> int:
    """Register a SuperNode's public key with ``flwr supernode register``; its node id.

    ``connection`` names a Control API connection in ``$FLWR_HOME/config.toml``
    (``env`` may set ``FLWR_HOME``); ``None``: the default one. A command that does
    not answer within ``timeout`` seconds is tried again, ``attempts`` times in
    all; then, or when it fails, :class:`RuntimeError` says what happened.
    ``flwr``: the CLI to run (default: the one beside this Python).
    """
    if flwr is None:
        beside = Path(sys.executable).parent / "flwr"
        flwr = beside if beside.exists() else "flwr"
    command = [str(flwr), "supernode", "register"]
    command += [str(public_key), *([connection] if connection else [])]
    shown = " ".join(command)
    for attempt in range(1, attempts + 1):
        try:
            done = subprocess.run(
                [*command, "--format", "json"],
                env=dict(env) if env is not None else None,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            if attempt < attempts:
                continue
            raise RuntimeError(
                f"`{shown}` did not answer within {timeout:g} s, {attempts} "
                "time(s): is the SuperLink of that connection running and not "
                "overloaded? (A timed-out attempt may still have registered the "
                "key: `flwr supernode ls` lists it.)"
            ) from None
        try:
            reply = json.loads(done.stdout[done.stdout.index("{") :])
            return int(reply["node-id"])
        except (ValueError, KeyError, TypeError):
            already = "already in use" in done.stdout + done.stderr
            raise RuntimeError(
                f"`{shown}` failed (exit {done.returncode}, attempt {attempt} of "
                f"{attempts})"
                + (
                    "; the key was registered by an earlier attempt that timed out"
                    if already and attempt > 1
                    else ""
                )
                + f":\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            ) from None
    raise AssertionError("unreachable")


class LocalDeployment:
    """A TLS SuperLink, its Fleet gateway and ``num_nodes`` SuperNodes on 127.0.0.1.

    The SuperLink runs with ``--enable-supernode-auth`` and listens on 127.0.0.1:
    :attr:`address` (Control, Runtime and Fleet APIs; the ``flwr`` connection
    :data:`CONNECTION` points there). The SuperNodes connect to the gateway at
    :attr:`fleet_address`, each with its own key pair, registered before it starts.
    A context manager.

    Parameters
    ----------
    num_nodes : int
        How many (registered) SuperNodes to start.
    node_configs : Sequence[Mapping[str, Any]] | None
        One ``--node-config`` mapping per SuperNode. ``None``: node ``i`` gets
        ``partition-id=i num-partitions=num_nodes`` (this app's generated data).
    workdir : str | Path | None
        Where certificates, keys, logs, state and the ``flwr`` CLI's
        ``FLWR_HOME`` go; a fresh temporary directory (removed at :meth:`stop`)
        when ``None``. One that already holds certificates is refused
        (:class:`~flwr_byz.deploy.certificates.KeyMaterialExistsError`).
    model_bytes : int | None
        The model's serialized size: the gateway refuses request bodies over
        :func:`~flwr_byz.deploy.fleet_gateway.body_limit` of it (``None``:
        the limit of any model, one array chunk plus framing).
    max_body_bytes : int | None
        The gateway's body limit itself, instead of one from ``model_bytes``.
    max_requests_per_peer : int | None
        Requests of one address the gateway serves at a time (``None``: 8 for each
        SuperNode, all of which connect from 127.0.0.1, and 16 more).

    Attributes
    ----------
    port : int
        The SuperLink's HTTPS port on 127.0.0.1 (Fleet, Control and Runtime APIs).
    fleet_port : int
        The gateway's HTTPS port: the Fleet API only, what SuperNodes use.
    flwr_home : Path
        ``FLWR_HOME`` of :meth:`run`; its ``config.toml`` holds the connection
        :data:`CONNECTION`.
    supernode_keys : list[SuperNodeKeys]
        Each SuperNode's key pair, in start order.
    registered_node_ids : list[int]
        The node id the SuperLink gave each registered public key.
    """

    def __init__(
        self,
        num_nodes: int = 4,
        node_configs: Sequence[Mapping[str, Any]] | None = None,
        workdir: str | Path | None = None,
        model_bytes: int | None = None,
        max_body_bytes: int | None = None,
        max_requests_per_peer: int | None = None,
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes={num_nodes!r} is not valid; valid: >= 1")
        if node_configs is None:
            node_configs = [
                {"partition-id": i, "num-partitions": num_nodes}
                for i in range(num_nodes)
            ]
        if len(node_configs) != num_nodes:
            raise ValueError(
                f"node_configs has {len(node_configs)} entries; num_nodes={num_nodes}"
            )
        self.num_nodes = num_nodes
        self.node_configs = [dict(c) for c in node_configs]
        self.max_body_bytes = (
            body_limit(model_bytes) if max_body_bytes is None else max_body_bytes
        )
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes={max_body_bytes!r}; valid: >= 1")
        # Every SuperNode here (and any spawn_supernode adds) shares 127.0.0.1.
        self.max_requests_per_peer = (
            DEFAULT_MAX_REQUESTS_PER_PEER * (num_nodes + 2)
            if max_requests_per_peer is None
            else max_requests_per_peer
        )
        #: Seconds one ``flwr supernode register`` may take (tried again after).
        self.register_timeout = 60.0
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="flwr-deploy-"))
        self.flwr_home = self.workdir / "cli-home"
        self.port = free_port()
        self.fleet_port = free_port()
        self.certificates: Certificates | None = None
        self.supernode_keys: list[SuperNodeKeys] = []
        self.registered_node_ids: list[int] = []
        self.superlink: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.supernodes: list[subprocess.Popen[bytes]] = []
        #: SuperNodes started by :meth:`spawn_supernode` (stopped with the rest).
        self.other_supernodes: list[subprocess.Popen[bytes]] = []
        # Each SuperNode's own Runtime API, where its ClientApp processes connect.
        self.node_addresses = [f"127.0.0.1:{free_port()}" for _ in range(num_nodes)]
        self._node_starts = [1] * num_nodes
        self._bin = Path(sys.executable).parent
        self.env = {
            **os.environ,
            "PATH": str(self._bin) + os.pathsep + os.environ.get("PATH", ""),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            # The app runs in this environment; no per-run `uv sync`.
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        }

    @property
    def address(self) -> str:
        """The SuperLink's address (Control and Runtime APIs)."""
        return f"127.0.0.1:{self.port}"

    @property
    def fleet_address(self) -> str:
        """The gateway's address: where SuperNodes connect."""
        return f"127.0.0.1:{self.fleet_port}"

    # --- lifecycle ----------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> LocalDeployment:
        """Make keys, start the SuperLink and gateway, register and start SuperNodes."""
        try:
            self.start_superlink(timeout)
            self._start_gateway(timeout)
            cli_env = {**self.env, "FLWR_HOME": str(self.flwr_home)}
            # One `flwr supernode register` per key, all at once: each spends its
            # time starting the CLI, not at the SuperLink.
            with ThreadPoolExecutor(len(self.supernode_keys)) as pool:
                self.registered_node_ids = list(
                    pool.map(
                        lambda keys: register_supernode(
                            keys.public_key, CONNECTION, cli_env, self.register_timeout
                        ),
                        self.supernode_keys,
                    )
                )
            for i, node_config in enumerate(self.node_configs):
                self.supernodes.append(
                    self._popen_supernode(
                        f"supernode-{i}",
                        node_config,
                        self.supernode_keys[i].private_key,
                        self.node_addresses[i],
                    )
                )
        except BaseException:
            self.stop()
            raise
        return self

    def start_superlink(self, timeout: float = 60.0) -> LocalDeployment:
        """What :meth:`start` does first: make the certificates and SuperNode keys,
        start the SuperLink (no gateway, no SuperNodes) and write the CLI's
        ``config.toml``. :meth:`stop` ends it."""
        try:
            self.certificates = make_certificates(self.workdir / "certificates")
            self.supernode_keys = make_supernode_keys(
                self.workdir / "supernode-keys",
                [f"supernode-{i}" for i in range(self.num_nodes)],
            )
            self._start_superlink(timeout)
            # The CLI's connection: owner-only, like the SuperLink's state.
            self.flwr_home.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_new_file(
                self.flwr_home / "config.toml",
                connection_toml(
                    CONNECTION, self.address, self.certificates.ca_cert
                ).encode(),
                0o600,
                overwrite=True,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(
        self,
        process: subprocess.Popen[bytes],
        url: str,
        log_file: Path,
        timeout: float,
        port: int,
        last_attempt: bool,
    ) -> bool:
        """True once ``url`` answers. False when ``process`` exited while another
        process holds ``port`` (:func:`free_port` only found it free at that
        moment): the caller starts it again on a fresh port."""
        assert self.certificates is not None
        tls = ssl.create_default_context(cafile=str(self.certificates.ca_cert))
        try:
            if wait_until_healthy(process, url, timeout, verify=tls):
                return True
        except TimeoutError as err:
            raise RuntimeError(str(err)) from None
        taken = not port_is_free(port)
        if taken and not last_attempt:
            return False
        raise RuntimeError(
            f"{process.args[0]} exited with code {process.returncode} "
            f"(port {port} {'taken' if taken else 'free'})" + log_tail(log_file, 40)
        )

    def _start_listener(
        self,
        attribute: str,
        port_attribute: str,
        command_for: Callable[[int], list[str]],
        env: dict[str, str],
        cwd: Path,
        log_file: Path,
        timeout: float,
    ) -> None:
        """Start ``command_for(port)`` as ``self.<attribute>`` and wait for its
        ``/health``; on a fresh port (``self.<port_attribute>``) if another process
        took the port before it bound it."""
        for attempt in range(1, START_ATTEMPTS + 1):
            port = getattr(self, port_attribute)
            process = spawn(command_for(port), env, cwd, log_file)
            setattr(self, attribute, process)
            url = f"https://127.0.0.1:{port}/health"
            last = attempt == START_ATTEMPTS
            if self._wait_healthy(process, url, log_file, timeout, port, last):
                return
            setattr(self, port_attribute, free_port())

    def _start_superlink(self, timeout: float) -> None:
        certificates = self.certificates
        assert certificates is not None
        home = self.workdir / "superlink"
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The SuperLink's state (runs, node keys, messages) is the owner's only:
        # SQLite gives its journal files the database file's mode.
        database = home / "state.db"
        if database.exists():
            database.chmod(0o600)
        else:
            write_new_file(database, b"", 0o600, overwrite=False)

        def command_for(port: int) -> list[str]:
            return [
                str(self._bin / "flower-superlink"),
                "--ssl-ca-certfile",
                str(certificates.ca_cert),
                "--ssl-certfile",
                str(certificates.server_cert),
                "--ssl-keyfile",
                str(certificates.server_key),
                # Only SuperNodes whose public key was registered may join.
                "--enable-supernode-auth",
                "--isolation",
                "subprocess",
                "--disable-runtime-dependency-installation",
                # Control, Runtime and Fleet APIs share this listener: loopback only.
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database",
                str(database),
            ]

        env = {**self.env, "FLWR_HOME": str(home)}
        log_file = self.workdir / "superlink.log"
        self._start_listener(
            "superlink", "port", command_for, env, home, log_file, timeout
        )

    def _start_gateway(self, timeout: float) -> None:
        certificates = self.certificates
        assert certificates is not None

        def command_for(port: int) -> list[str]:
            return command_line(
                f"127.0.0.1:{port}",
                self.address,
                certificates.ca_cert.parent,
                self.max_body_bytes,
                self.max_requests_per_peer,
            )

        path = os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.getenv("PYTHONPATH")]))
        env = {**self.env, "PYTHONPATH": path}
        log_file = self.workdir / "gateway.log"
        self._start_listener(
            "gateway", "fleet_port", command_for, env, self.workdir, log_file, timeout
        )

    def _popen_supernode(
        self,
        name: str,
        node_config: Mapping[str, Any],
        private_key: Path | None,
        runtime_address: str,
    ) -> subprocess.Popen[bytes]:
        assert self.certificates is not None
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        command = [
            str(self._bin / "flower-supernode"),
            "--superlink",
            self.fleet_address,
            "--root-certificates",
            str(self.certificates.ca_cert),
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            runtime_address.rsplit(":", 1)[1],
            "--node-config",
            run_config_arg(node_config),
        ]
        if private_key is not None:
            command += ["--auth-supernode-private-key", str(private_key)]
        return spawn(
            command,
            {**self.env, "FLWR_HOME": str(home)},
            home,
            self.workdir / f"{name}.log",
        )

    def spawn_supernode(
        self,
        name: str,
        node_config: Mapping[str, Any] | None = None,
        private_key: str | Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start one more SuperNode against the gateway, logging to ``<name>.log``.

        It is *not* registered: this is what a stranger holding ``ca.crt`` (and,
        with ``private_key``, a key of their own) can start. :meth:`stop` ends it.
        """
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or name in {
            f"supernode-{i}" for i in range(self.num_nodes)
        }:
            raise ValueError(f"name={name!r} is not a free, plain file name")
        process = self._popen_supernode(
            name,
            node_config or {},
            None if private_key is None else Path(private_key),
            f"127.0.0.1:{free_port()}",
        )
        self.other_supernodes.append(process)
        return process

    def stop(self) -> None:
        """Stop the SuperNodes, the gateway, then the SuperLink, and their children."""
        # SuperNodes first, all at once: each deactivates at the live SuperLink.
        stop_processes([*self.supernodes, *self.other_supernodes])
        self.supernodes, self.other_supernodes = [], []
        for attribute in ("gateway", "superlink"):
            process = getattr(self, attribute)
            if process is not None:
                stop_processes([process])
                setattr(self, attribute, None)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill_supernode(self, index: int) -> int:
        """``kill -9`` SuperNode ``index`` and everything it started, like a machine
        that dies: it neither deregisters nor says goodbye, so the SuperLink only
        learns of it from the missed heartbeats. Returns the SuperNode's PID."""
        process = self.supernodes[index]
        kill_now([process])
        return process.pid

    def pids(self) -> list[int]:
        """PIDs of the SuperLink, gateway and SuperNodes (process-group leaders)."""
        procs = [self.superlink, self.gateway, *self.supernodes, *self.other_supernodes]
        return [p.pid for p in procs if p is not None]

    def _restart_on_taken_port(self, index: int) -> bool:
        """Start SuperNode ``index`` again on a fresh Runtime API port if it exited
        because another process holds its port; False otherwise (and after
        ``START_ATTEMPTS`` starts)."""
        port = int(self.node_addresses[index].rsplit(":", 1)[1])
        if port_is_free(port) or self._node_starts[index] >= START_ATTEMPTS:
            return False
        self._node_starts[index] += 1
        self.node_addresses[index] = f"127.0.0.1:{free_port()}"
        self.supernodes[index] = self._popen_supernode(
            f"supernode-{index}",
            self.node_configs[index],
            self.supernode_keys[index].private_key,
            self.node_addresses[index],
        )
        return True

    def node_ids(self, timeout: float = JOIN_TIMEOUT) -> list[int]:
        """The Flower node id of each SuperNode, in start order, once all have one.

        A SuperNode logs ``SuperNode ID: <id>`` once the SuperLink activated it,
        so this also waits until every node has joined the federation. After
        ``timeout`` seconds, or once a SuperNode exited, :class:`RuntimeError`
        names the SuperNodes missing and ends with the last lines of their logs
        and the gateway's.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = [
                re.search(r"SuperNode ID: (\d+)", self.log(f"supernode-{i}"))
                for i in range(len(self.supernodes))
            ]
            if all(found):
                return [int(m.group(1)) for m in found if m]
            dead = [
                i
                for i, p in enumerate(self.supernodes)
                if p.poll() is not None and not self._restart_on_taken_port(i)
            ]
            if dead or time.monotonic() > deadline:
                missing = [i for i, m in enumerate(found) if m is None]
                logs = [self.workdir / f"supernode-{i}.log" for i in missing[:2]]
                raise RuntimeError(
                    f"SuperNode(s) {missing} did not join within {timeout:.0f} s "
                    f"(exited: {dead}); see {self.workdir}/supernode-<i>.log"
                    + "".join(
                        log_tail(log, 8)
                        for log in [*logs, self.workdir / "gateway.log"]
                    )
                )
            time.sleep(0.2)

    def log(self, name: str = "superlink") -> str:
        """The text of ``superlink.log``, ``gateway.log`` or ``<supernode>.log``."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- the flwr CLI ---------------------------------------------------------------
    def flwr(
        self,
        *args: str,
        timeout: float = 600.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``flwr <args>`` with this deployment's ``FLWR_HOME`` (or ``env``)."""
        return subprocess.run(
            [str(self._bin / "flwr"), *args],
            env=dict(env)
            if env is not None
            else {**self.env, "FLWR_HOME": str(self.flwr_home)},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run(
        self,
        app_dir: str | Path,
        run_config: Mapping[str, Any] | None = None,
        connection: str = CONNECTION,
        timeout: float = 600.0,
    ) -> subprocess.CompletedProcess[str]:
        """``flwr run <app_dir> <connection> --stream``; wait for the run to end.

        It runs a copy of ``app_dir`` without the directories that ``flwr run``
        would walk only to ignore them (:func:`app_snapshot`): the same FAB."""
        with tempfile.TemporaryDirectory(dir=self.workdir) as staging:
            app = app_snapshot(app_dir, Path(staging) / "app")
            args = ["run", str(app), connection, "--stream"]
            if run_config:
                args += ["--run-config", run_config_arg(run_config)]
            return self.flwr(*args, timeout=timeout)


def _make_key_material(args: argparse.Namespace) -> int:
    if args.make_certificates:
        hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
        paths = make_certificates(
            args.make_certificates, hosts, overwrite=args.overwrite
        )
        hosts += [] if "127.0.0.1" in hosts else ["127.0.0.1"]
        print(f"CA certificate:     {paths.ca_cert} (public)")
        print(f"CA key:             {paths.ca_cert.with_suffix('.key')} (keep offline)")
        print(f"server certificate: {paths.server_cert} (valid for {', '.join(hosts)})")
        print(f"server key:         {paths.server_key} (SuperLink machine only)")
    if args.make_supernode_keys:
        names = [n.strip() for n in args.names.split(",") if n.strip()]
        pairs = make_supernode_keys(
            args.make_supernode_keys, names, overwrite=args.overwrite
        )
        for pair in pairs:
            line = f"{pair.name}: private {pair.private_key}, public {pair.public_key}"
            if args.register:
                node_id = register_supernode(pair.public_key, args.register)
                line += f" registered as node {node_id}"
            print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Start a local deployment, run this repo's app once, stop everything.

    With ``--make-certificates DIR`` only write a CA and a server certificate for
    ``--hosts`` to ``DIR``; with ``--make-supernode-keys DIR --names ...`` only
    write one SuperNode key pair per name (and, with ``--register CONNECTION``,
    register each public key at that SuperLink). Both refuse to replace existing
    files without ``--overwrite``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m flwr_byz.deploy.deployment",
        description="Run this app on a local TLS SuperLink and SuperNodes, or make "
        "the certificates and SuperNode keys of a real deployment.",
    )
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strategy", default="faba")
    parser.add_argument("--attack", default="scaling")
    parser.add_argument("--byzantine-fraction", type=float, default=0.25)
    parser.add_argument("--app", default=str(Path(__file__).resolve().parents[2]))
    # The app turns {run} into a directory of this run's own.
    parser.add_argument("--output-dir", default="results/deployment/{run}")
    parser.add_argument(
        "--keep", metavar="DIR", help="keep certificates, logs and state in DIR"
    )
    parser.add_argument(
        "--make-certificates",
        metavar="DIR",
        help="only write ca.crt, ca.key, server.pem, server.key to DIR and exit",
    )
    parser.add_argument(
        "--hosts",
        default="127.0.0.1,localhost",
        help="comma-separated names/IPs the server certificate is valid for "
        "(with --make-certificates; 127.0.0.1 is always added; default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--make-supernode-keys",
        metavar="DIR",
        help="only write DIR/<name>.key (private, 0600) and DIR/<name>.pub for "
        "each of --names and exit",
    )
    parser.add_argument(
        "--names",
        default="",
        help="comma-separated SuperNode names (with --make-supernode-keys)",
    )
    parser.add_argument(
        "--register",
        metavar="CONNECTION",
        help="with --make-supernode-keys: register each public key through this "
        "flwr connection (the SuperLink's loopback Control API)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="let --make-certificates/--make-supernode-keys replace existing "
        "files (a new CA must then reach every SuperNode and flwr user)",
    )
    args = parser.parse_args(argv)
    if args.make_certificates or args.make_supernode_keys:
        try:
            return _make_key_material(args)
        except (KeyMaterialExistsError, ValueError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    run_config = {
        "num-server-rounds": args.rounds,
        "strategy": args.strategy,
        "attack": args.attack,
        "byzantine-fraction": args.byzantine_fraction,
        "assumed-byzantine-fraction": args.byzantine_fraction,
        "output-dir": str(Path(args.output_dir).resolve()),
    }
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C, so the deployment's context
    # manager stops the SuperLink, the gateway and the SuperNodes it started (they
    # run in sessions of their own and would outlive this process).
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with LocalDeployment(args.nodes, workdir=args.keep) as deployment:
            print(
                f"SuperLink (TLS, SuperNode auth) on {deployment.address}; Fleet "
                f"gateway on {deployment.fleet_address}; {args.nodes} registered "
                "SuperNodes",
                flush=True,
            )
            node_ids = deployment.node_ids()
            print("node ids:", ", ".join(map(str, node_ids)), flush=True)
            done = deployment.run(args.app, run_config)
            print(done.stdout, end="")
            print(done.stderr, end="", file=sys.stderr)
            return done.returncode
    except KeyboardInterrupt:
        print(
            "deployment: interrupted; the SuperLink, gateway and SuperNodes it "
            "started were stopped",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    # One signal is enough: a second one must not cut the clean-up short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
