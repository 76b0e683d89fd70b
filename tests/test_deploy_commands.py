"""The deployment commands the docs show, run as commands (``python -m ...``).

The certificates, the SuperNode keys (made, and registered at a running
SuperLink), the Fleet gateway's usage, and the deprecated ``flwr_byz.experiments``
paths, which warn on stderr and do the same. The whole local deployment
(``--nodes 4 --rounds 3``) is run by ``test_deployment.py``.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

import flwr_byz.deploy.deployment as deployment_module
import flwr_byz.deploy.fleet_gateway as gateway_module
from flwr_byz.deploy.deployment import CONNECTION, LocalDeployment

REPO = Path(__file__).resolve().parents[1]
DEPRECATED = "flwr_byz.experiments.{0} is deprecated; use python -m flwr_byz.deploy.{0}"
# Each deployment is a dozen processes (SuperLink, gateway, SuperNodes, one process
# per ClientApp call): two at once on two cores slow each past its time limits, so
# these modules share one worker. No process outlives a test (`no_process_left`).
pytestmark = [
    pytest.mark.xdist_group("deployment"),
    pytest.mark.usefixtures("no_process_left"),
]


def _command(module: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` from a directory outside the repository."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        **kwargs.pop("env", {}),  # type: ignore[dict-item]
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def _san(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in names}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("package", ["deploy", "experiments"])
def test_make_certificates_as_the_docs_show(tmp_path: Path, package: str) -> None:
    module = f"flwr_byz.{package}.deployment"
    args = "--make-certificates certificates --hosts superlink.example.org"
    done = _command(module, *args.split(), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    folder = tmp_path / "certificates"
    assert sorted(p.name for p in folder.iterdir()) == [
        "ca.crt",
        "ca.key",
        "server.key",
        "server.pem",
    ]
    assert _san(folder / "server.pem") == {
        "superlink.example.org",
        str(ipaddress.ip_address("127.0.0.1")),
    }
    assert stat.S_IMODE((folder / "ca.key").stat().st_mode) == 0o600
    assert "server certificate:" in done.stdout
    warned = DEPRECATED.format("deployment") in done.stderr
    assert warned == (package == "experiments"), done.stderr
    # Run again: the CA is never replaced; the command says so and exits 2.
    again = _command(module, "--make-certificates", "certificates", cwd=tmp_path)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


@pytest.mark.timeout(240)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_make_and_register_supernode_keys_as_the_docs_show(tmp_path: Path) -> None:
    """``--make-supernode-keys keys --names site-0``; then, on the SuperLink
    machine, ``--names site-1,site-2 --register <connection>`` registers each."""
    args = "--make-supernode-keys keys --names site-0"
    done = _command("flwr_byz.deploy.deployment", *args.split(), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert stat.S_IMODE((tmp_path / "keys" / "site-0.key").stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "site-0.pub").read_text().startswith("ecdsa-sha2-")

    deployment = LocalDeployment(1, workdir=tmp_path / "deployment")
    try:
        deployment.start_superlink(timeout=60)
        args = "--make-supernode-keys keys --names site-1,site-2 --register"
        done = _command(
            "flwr_byz.deploy.deployment",
            *args.split(),
            CONNECTION,
            cwd=tmp_path,
            env={"FLWR_HOME": str(deployment.flwr_home)},
        )
        assert done.returncode == 0, done.stdout + done.stderr
        ids = [int(line.rsplit(" ", 1)[1]) for line in done.stdout.splitlines()]
        assert len(ids) == 2 and "registered as node" in done.stdout
        listed = deployment.flwr("supernode", "ls", "--format", "json", timeout=60)
        nodes = json.loads(listed.stdout[listed.stdout.index("{") :])["nodes"]
        assert {int(n["node-id"]) for n in nodes} == set(ids)
    finally:
        deployment.stop()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("package", ["deploy", "experiments"])
def test_fleet_gateway_help(package: str, tmp_path: Path) -> None:
    done = _command(f"flwr_byz.{package}.fleet_gateway", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("usage: python -m flwr_byz.deploy.fleet_gateway")
    for flag in ("--listen", "--superlink", "--certificates", "--max-body-bytes"):
        assert flag in done.stdout
    warned = DEPRECATED.format("fleet_gateway") in done.stderr
    assert warned == (package == "experiments"), done.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [("deployment", deployment_module), ("fleet_gateway", gateway_module)],
)
def test_the_old_import_paths_warn_and_give_the_same_names(old: str, new) -> None:
    name = f"flwr_byz.experiments.{old}"
    sys.modules.pop(name, None)
    with pytest.warns(FutureWarning, match=f"use flwr_byz.deploy.{old}$"):
        module = importlib.import_module(name)
    assert module.__all__ == new.__all__
    for attribute in new.__all__:
        assert getattr(module, attribute) is getattr(new, attribute), attribute
