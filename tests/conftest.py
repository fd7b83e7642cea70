from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import short_tmp


@pytest.fixture
def root() -> Iterator[Path]:
    """A short temporary directory: unix socket paths must stay under 104 bytes, and
    pytest's ``tmp_path`` can be longer than that."""
    with short_tmp() as path:
        yield path


@pytest.fixture
def fake_owners(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[Path, int]], None]:
    """``fake_owners({path: uid})``: ``Path.stat`` says these paths are these uids' (a
    test cannot chown unless it runs as root)."""
    real = Path.stat

    def owned(owners: dict[Path, int]) -> None:
        def stat(self: Path, *, follow_symlinks: bool = True) -> os.stat_result:
            st = real(self, follow_symlinks=follow_symlinks)
            if self not in owners:
                return st
            fields = list(st)
            fields[4] = owners[self]  # st_uid
            return os.stat_result(fields)

        monkeypatch.setattr(Path, "stat", stat)

    return owned
