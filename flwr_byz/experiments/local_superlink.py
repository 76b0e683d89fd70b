"""A private SuperLink in simulation mode, owned by the caller, on free ports.

``flwr run .`` against the default ``:local:`` connection starts a detached
SuperLink on fixed ports that outlives the command. Tests and the experiment grid
need the opposite: their own SuperLink, on ports nobody else uses, in their own
``FLWR_HOME``, started and stopped by PID. ``flwr run`` finds it through the same
environment variables it uses for its managed local SuperLink.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

# Its own stream: drawing ports must not move the seeded global `random` state.
_PORT_DRAWS = random.Random()
# Below Linux's default ephemeral range, above Ray's default worker ports (10002 to
# 19999) and the ports the Ray-cluster test scans from 20000.
_FIRST_PORT = 21000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where unknown)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, drawn below the kernel's
    ephemeral range.

    The caller binds it later, in another process. A port of the ephemeral range
    (where ``bind(port=0)`` and every outgoing connection get theirs) can be
    taken in between by any process on the machine (CI saw a SuperNode's port
    go to a parallel test's connection); one below it only by a process that
    names it.
    """
    low, high = _FIRST_PORT, _ephemeral_low()
    if high - low >= 1000:
        for _ in range(200):
            port = _PORT_DRAWS.randrange(low, high)
            if port_is_free(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a TCP listener could bind ``port`` on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_config_arg(overrides: Mapping[str, Any]) -> str:
    """``--run-config`` value for ``overrides`` (TOML values, space separated)."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in overrides.items())


def session_of(pid: int) -> int | None:
    """The session id of ``pid`` (from ``/proc/<pid>/stat``), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parens.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[3]) if len(fields) > 3 else None


def processes_with_home(flwr_home: str | Path) -> list[int]:
    """PIDs of the processes a SuperLink with ``flwr_home`` started (Linux ``/proc``;
    an empty list where it is not available).

    Those whose environment has ``FLWR_HOME=flwr_home``, and every process in their
    sessions: Ray's agents rewrite their environment area with their process title,
    so they are found through the session of the SuperExec that started them.
    """
    wanted = f"FLWR_HOME={flwr_home}".encode()
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    pids = [int(e.name) for e in proc.iterdir() if e.name.isdigit()]
    pids = [pid for pid in pids if pid != os.getpid()]
    sessions = {}
    found = set()
    for pid in pids:
        sessions[pid] = session_of(pid)
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in env:
            found.add(pid)
    ours = {sessions[pid] for pid in found} - {None, session_of(os.getpid())}
    found |= {pid for pid in pids if sessions.get(pid) in ours}
    return sorted(found)


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
                output = self.flwr_home / "superlink.out"
                tail = output.read_text(errors="replace").strip().splitlines()[-15:]
                raise RuntimeError(
                    f"flower-superlink exited with code {self.returncode} "
                    f"(attempt {attempt} of {attempts}; port {self.http_port} "
                    f"{'taken' if taken else 'free'}); its last output, from "
                    f"{output}:\n" + "\n".join(tail)
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
        with (self.flwr_home / "superlink.out").open("wb") as output:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own process group, so stop() also ends the ServerApp and
                # SuperNode processes it spawns.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.returncode = self.process.returncode
                self.process = None
                return False
            try:
                if httpx.get(
                    f"http://127.0.0.1:{self.http_port}/health", timeout=0.5
                ).is_success:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"flower-superlink did not start within {timeout:.0f} s")

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
        """``flwr run <app_dir> --stream`` against this SuperLink; wait for the end."""
        return subprocess.run(
            self.run_command(app_dir, run_config, num_supernodes),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop(self) -> None:
        """Stop the SuperLink and everything it started."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self.process = None
        # The SuperExec and Ray start their own sessions, so their helpers (Ray's
        # dashboard and runtime-env agents) can outlive the process group. Every
        # process this SuperLink started carries its FLWR_HOME: end those too.
        for pid in processes_with_home(self.flwr_home):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self._own_home:
            shutil.rmtree(self.flwr_home, ignore_errors=True)

    def __enter__(self) -> LocalSuperLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
