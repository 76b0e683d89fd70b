"""checkpoint.pt is the owner's only and on disk before it replaces the old one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from flwr_byz.app.checkpoint import save_checkpoint

PAYLOAD = {"format": "test", "arrays": {"w": [1.0, 2.0]}}


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_the_checkpoint_is_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "checkpoint.pt"
    # An older checkpoint and a crash's leftover, both world-readable.
    path.write_bytes(b"old")
    path.chmod(0o644)
    (tmp_path / ".checkpoint.pt.tmp").write_bytes(b"half")
    (tmp_path / ".checkpoint.pt.tmp").chmod(0o666)
    previous = os.umask(umask)
    try:
        save_checkpoint(path, PAYLOAD)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / ".checkpoint.pt.tmp").exists()


def test_the_file_and_then_the_directory_are_synced_around_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A power cut is what fsync guards against; what can be observed is that the
    # written file is synced before the rename and the directory after it.
    events: list[tuple[str, int]] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_ino))
        fsync(fd)

    def spy_replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", os.stat(src).st_ino))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, PAYLOAD)
    file_inode = path.stat().st_ino
    directory_inode = tmp_path.stat().st_ino
    assert events == [
        ("fsync", file_inode),
        ("replace", file_inode),
        ("fsync", directory_inode),
    ]
    assert path.read_bytes()[:2] == b"PK"  # a torch zip archive, written whole
