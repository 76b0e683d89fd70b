"""A private SuperLink in simulation mode, owned by the caller, on free ports.

``flwr run .`` against the default ``:local:`` connection starts a detached
SuperLink on fixed ports that outlives the command. Tests and the experiment grid
need the opposite: their own SuperLink, on ports nobody else uses, in their own
``FLWR_HOME``, started and stopped by PID. ``flwr run`` finds it through the same
environment variables it uses for its managed local SuperLink.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr_byz.deploy.app_snapshot import app_snapshot
from flwr_byz.deploy.processes import (
    end_home,
    free_port,
    home_sessions,
    log_tail,
    port_is_free,
    spawn,
    stop_processes,
    wait_until_healthy,
)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_config_arg(overrides: Mapping[str, Any]) -> str:
    """``--run-config`` value for ``overrides`` (TOML values, space separated)."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in overrides.items())


class LocalSuperLink:
    """A SuperLink subprocess in simulation mode; use as a context manager.

    Parameters
    ----------
    flwr_home : str | Path | None
        Flower's home directory for this SuperLink and the ``flwr`` CLI calls made
        through :meth:`run`; a fresh temporary directory when ``None``.
    """

    def __init__(self, flwr_home: str | Path | None = None) -> None:
        self._own_home = flwr_home is None
        self.flwr_home = Path(flwr_home or tempfile.mkdtemp(prefix="flwr-home-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "FLWR_HOME": str(self.flwr_home),
            # Use the installed environment, not a per-run `uv sync` of the app.
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        }
        self._pick_ports()

    def _pick_ports(self) -> None:
        self.http_port = free_port()
        self.control_port = free_port()
        self.env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(self.http_port)
        self.env["FLWR_LOCAL_CONTROL_API_PORT"] = str(self.control_port)

    def start(self, timeout: float = 60.0, attempts: int = 3) -> LocalSuperLink:
        """Start the SuperLink and wait until its HTTP endpoint answers.

        :func:`free_port` finds a port that is free at that moment only: another
        process (a Ray worker starting beside this SuperLink, another test) can bind
        it first. A SuperLink that exits at start-up while one of its ports is
        taken is started again on fresh ports, up to ``attempts`` times in all.
        """
        for attempt in range(1, attempts + 1):
            if self._launch(timeout):
                return self
            ports = (self.http_port, self.control_port)
            taken = not all(port_is_free(port) for port in ports)
            if not taken or attempt == attempts:
                raise RuntimeError(
                    f"flower-superlink exited with code {self.returncode} "
                    f"(attempt {attempt} of {attempts}; port {self.http_port} "
                    f"{'taken' if taken else 'free'})"
                    + log_tail(self.flwr_home / "superlink.out")
                )
            self._pick_ports()
        raise AssertionError("unreachable")

    def _launch(self, timeout: float) -> bool:
        """Start one SuperLink process: True once it answers, False if it exited."""
        log_file = self.flwr_home / "superlink.log"
        command = [
            str(Path(sys.executable).parent / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--disable-runtime-dependency-installation",
            "--control-api-address",
            f"127.0.0.1:{self.control_port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.http_port),
            "--log-file",
            str(log_file),
            "--database",
            str(self.flwr_home / "state.db"),
        ]
        # Its own process group, so stop() also ends the ServerApp and SuperNode
        # processes it spawns.
        self.process = spawn(command, self.env, None, self.flwr_home / "superlink.out")
        url = f"http://127.0.0.1:{self.http_port}/health"
        try:
            if wait_until_healthy(self.process, url, timeout):
                return True
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"flower-superlink did not start within {timeout:.0f} s"
            ) from None
        self.returncode = self.process.returncode
        self.process = None
        return False

    def run_command(
        self,
        app_dir: str | Path,
        run_config: Mapping[str, Any] | None = None,
        num_supernodes: int = 10,
        federation_config: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """The ``flwr run <app_dir> --stream`` command line for this SuperLink (run
        it with :attr:`env`).

        ``federation_config`` adds simulation settings of this run only (Flower's
        ``--federation-config`` keys, e.g. ``init-args-num-cpus``: the CPUs of the
        run's own Ray instance)."""
        federation = {"num-supernodes": num_supernodes, **(federation_config or {})}
        command = [
            str(Path(sys.executable).parent / "flwr"),
            "run",
            str(app_dir),
            "--stream",
            "--federation-config",
            run_config_arg(federation),
        ]
        if run_config:
            command += ["--run-config", run_config_arg(run_config)]
        return command

    def run(
        self,
        app_dir: str | Path,
        run_config: Mapping[str, Any] | None = None,
        num_supernodes: int = 10,
        timeout: float = 900.0,
    ) -> subprocess.CompletedProcess[str]:
        """``flwr run <app_dir> --stream`` against this SuperLink; wait for the end.

        It runs a copy of ``app_dir`` without the directories that ``flwr run``
        would walk only to ignore them (:func:`app_snapshot`): the same FAB."""
        with tempfile.TemporaryDirectory(dir=self.flwr_home) as staging:
            app = app_snapshot(app_dir, Path(staging) / "app")
            return subprocess.run(
                self.run_command(app, run_config, num_supernodes),
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )

    def stop(self) -> None:
        """Stop the SuperLink and everything it started."""
        # The SuperExec and Ray start their own sessions, so their helpers (Ray's
        # dashboard and runtime-env agents) can outlive the process group. They
        # are found through the sessions of the processes with this FLWR_HOME,
        # noted before those stop.
        sessions = home_sessions(self.flwr_home)
        if self.process is not None:
            stop_processes([self.process])
        self.process = None
        end_home(self.flwr_home, sessions)
        if self._own_home:
            shutil.rmtree(self.flwr_home, ignore_errors=True)

    def __enter__(self) -> LocalSuperLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
