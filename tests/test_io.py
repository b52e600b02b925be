"""fastbert._io.atomic_write: the one way fastbert replaces a file (weights, config, metrics, plots, links)."""
import os

import pytest

from fastbert._io import atomic_write


def test_text_and_writer_replace_the_file(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write(path, "one")
    atomic_write(path, "twö")
    assert path.read_text(encoding="utf-8") == "twö"
    atomic_write(str(path), lambda tmp: open(tmp, "wb").write(b"\x00\x01"))
    assert path.read_bytes() == b"\x00\x01" and os.listdir(tmp_path) == ["a.txt"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_a_symlink_is_replaced_in_one_step(tmp_path):
    for d in ("s1", "s2"):
        (tmp_path / d).mkdir()
    link = tmp_path / "last"
    atomic_write(link, lambda tmp: os.symlink("s1", tmp))
    atomic_write(link, lambda tmp: os.symlink("s2", tmp))
    assert os.readlink(link) == "s2" and sorted(os.listdir(tmp_path)) == ["last", "s1", "s2"]
