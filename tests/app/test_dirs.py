"""``make_dirs``: the missing parents of a directory the product makes get its mode,
not ``mkdir -p``'s 0777 less the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from audit_middleware._dirs import make_dirs


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_missing_parents_get_the_mode_and_existing_ones_are_left_as_they_are(
        tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    old = os.umask(0)
    try:
        make_dirs(tmp_path / "a" / "b" / "c", 0o750)
        make_dirs(tmp_path / "a" / "b" / "c", 0o700)  # exists: nothing changes
    finally:
        os.umask(old)
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o750] * 3
    assert mode(tmp_path) == 0o755


def test_the_umask_still_takes_bits_away(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        make_dirs(tmp_path / "a" / "b", 0o750)
    finally:
        os.umask(old)
    assert mode(tmp_path / "a") == mode(tmp_path / "a" / "b") == 0o700


def test_a_file_in_the_way_is_refused_as_mkdir_refuses_it(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("not a directory")
    with pytest.raises(FileExistsError):
        make_dirs(tmp_path / "a", 0o750)
    with pytest.raises(NotADirectoryError):
        make_dirs(tmp_path / "a" / "b", 0o750)
