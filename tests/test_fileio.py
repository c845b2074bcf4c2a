"""affcli.fileio: numbered output folders and reading users' files."""

from __future__ import annotations

from affcli.fileio import next_numbered_dir


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
