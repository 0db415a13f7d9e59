"""A file is written whole or not at all, with shareable permissions."""

import os

import pytest

from pathfm.atomic import atomic_path, write_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "entry.json"
    write_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.json"]


def test_the_new_file_replaces_the_old_with_umask_permissions(tmp_path):
    target = tmp_path / "plot.png"
    write_atomic(target, b"old")
    with atomic_path(target, suffix=".png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".png") and tmp.name.startswith(".")
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # readers see the old file until the rename
    assert target.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
