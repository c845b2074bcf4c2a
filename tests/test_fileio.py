"""affcli.fileio: numbered output folders and reading users' files."""

from __future__ import annotations

import os

import pytest

from affcli.errors import AffError
from affcli.fileio import next_numbered_dir, read_user_bytes


def test_next_numbered_dir_takes_the_next_free_number(tmp_path):
    parent = tmp_path / "runs" / "m"
    assert next_numbered_dir(parent, "seen") == parent / "seen-1"  # parents created
    assert next_numbered_dir(parent, "seen") == parent / "seen-2"
    (parent / "seen-7").mkdir()
    (parent / "unseen-9").mkdir()  # another prefix and stray names do not count
    (parent / "seen-x").mkdir()
    assert next_numbered_dir(parent, "seen") == parent / "seen-8"
    assert next_numbered_dir(parent, "unseen") == parent / "unseen-10"
    assert next_numbered_dir(parent, "a.b") == parent / "a.b-1"  # prefix taken literally
    assert all(p.is_dir() for p in parent.iterdir())


def test_read_user_bytes_names_the_file_in_every_failure(tmp_path):
    ok = tmp_path / "a.bin"
    ok.write_bytes(b"\x00data")
    assert read_user_bytes(ok) == b"\x00data"
    with pytest.raises(AffError, match="image not found") as info:
        read_user_bytes(tmp_path / "missing.jpg", "image")
    assert info.value.exit_code == 2 and "missing.jpg" in str(info.value)
    with pytest.raises(AffError, match="is a folder, expected an image"):
        read_user_bytes(tmp_path, "image")
    with pytest.raises(AffError, match="is a folder, expected a file"):
        read_user_bytes(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs file permissions")
def test_read_user_bytes_unreadable(tmp_path):
    locked = tmp_path / "locked.ply"
    locked.write_bytes(b"ply")
    locked.chmod(0)
    try:
        with pytest.raises(AffError, match="cannot read the mesh"):
            read_user_bytes(locked, "mesh")
    finally:
        locked.chmod(0o600)
