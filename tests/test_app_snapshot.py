"""`app_snapshot`: the app's directory without the directories `flwr run` walks only
to ignore them, so Flower builds the same FAB from the copy."""

from __future__ import annotations

import os
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from flwr_byz.deploy.app_snapshot import app_snapshot

REPO = Path(__file__).resolve().parents[1]

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "snapapp"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "tests"

[tool.flwr.app.components]
serverapp = "snapapp.server:app"
clientapp = "snapapp.client:app"

[tool.flwr.app.config]
num-server-rounds = 1
"""


def _fab_files(fab: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(BytesIO(fab)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    _write(root / "pyproject.toml", PYPROJECT)
    _write(root / ".gitignore", "results/\n*.log\nbuild/\n")
    _write(root / "snapapp" / "__init__.py", "")
    _write(root / "snapapp" / "server.py", "app = None\n")
    _write(root / "snapapp" / "client.py", "app = None\n")
    _write(root / "snapapp" / "conf" / "defaults.yaml", "a: 1\n")
    _write(root / "README.md", "# snap\n")
    # Not copied: a virtual environment, git's store, a gitignored directory (deep
    # too), caches.
    _write(root / ".venv" / "lib" / "site.py", "x = 1\n")
    _write(root / ".git" / "HEAD", "ref: refs/heads/main\n")
    _write(root / "results" / "run" / "results.json", "{}\n")
    _write(root / "snapapp" / "build" / "gen.py", "y = 2\n")
    _write(root / "snapapp" / "__pycache__" / "server.py", "z = 3\n")
    _write(root / "run.log", "kept by the copy, dropped by Flower\n")
    return root


def test_the_snapshot_builds_flowers_fab_of_the_app_byte_for_byte(
    app: Path, tmp_path: Path
) -> None:
    snapshot = app_snapshot(app, tmp_path / "copy")
    fab = build_fab_from_disk(snapshot)
    assert fab == build_fab_from_disk(app)
    files = _fab_files(fab)
    assert "snapapp/server.py" in files and "snapapp/conf/defaults.yaml" in files


def test_ignored_directories_are_not_copied_and_the_rest_is(
    app: Path, tmp_path: Path
) -> None:
    snapshot = app_snapshot(app, tmp_path / "copy")
    copied = sorted(
        p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()
    )
    assert copied == [
        ".gitignore",
        "README.md",
        "pyproject.toml",
        "run.log",
        "snapapp/__init__.py",
        "snapapp/client.py",
        "snapapp/conf/defaults.yaml",
        "snapapp/server.py",
    ]


def test_a_gitignore_that_re_includes_prunes_nothing_it_names(
    app: Path, tmp_path: Path
) -> None:
    # Flower (not git) brings `results/keep.json` back from the ignored directory
    # `results/`: no directory of a .gitignore with a `!` is skipped whole.
    (app / ".gitignore").write_text("results/\n!results/keep.json\n")
    _write(app / "results" / "keep.json", '{"keep": true}\n')
    snapshot = app_snapshot(app, tmp_path / "copy")
    assert (snapshot / "results" / "keep.json").is_file()
    assert build_fab_from_disk(snapshot) == build_fab_from_disk(app)


def test_symbolic_links_are_skipped_as_flower_skips_them(
    app: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    _write(outside / "secret.py", "token = 1\n")
    os.symlink(outside, app / "snapapp" / "linked")
    os.symlink(outside / "secret.py", app / "snapapp" / "alias.py")
    snapshot = app_snapshot(app, tmp_path / "copy")
    assert not (snapshot / "snapapp" / "linked").exists()
    assert not (snapshot / "snapapp" / "alias.py").exists()
    assert build_fab_from_disk(snapshot) == build_fab_from_disk(app)


def test_this_repository_builds_the_same_fab_from_its_snapshot(tmp_path: Path) -> None:
    snapshot = app_snapshot(REPO, tmp_path / "copy")
    assert not (snapshot / ".git").exists()
    assert build_fab_from_disk(snapshot) == build_fab_from_disk(REPO)


def test_a_directory_without_pyproject_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no pyproject\.toml"):
        app_snapshot(tmp_path, tmp_path / "copy")
