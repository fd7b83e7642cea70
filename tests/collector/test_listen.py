"""The unix socket's file (``collector.listen``): at the stop, removed only while it is
still the file this collector bound."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from collector import listen
from collector.listen import IngestError, bind_unix


def test_a_stop_leaves_the_socket_a_restarted_collector_bound_after_this_one_closed(
        tmp_path: Path) -> None:
    """An overlapping restart as it happens: this collector's stop closes its listener
    first (the file stays), the new collector finds nobody listening, replaces the file
    and binds its own, then this one's drain ends. The file it bound was freed by that
    replacement, and a filesystem such as ext4 gives its inode number to the new file at
    once: compared by (st_dev, st_ino) alone, the new collector's socket passed for this
    one's and was removed, and no app could connect to it again."""
    path = tmp_path / "collector.sock"
    listener, bound = bind_unix(path)
    listener.close()  # the stop's first step: no longer listening
    newer, newer_file = bind_unix(path)  # the new collector: stale, replaced
    try:
        assert bound.remove() == "another's"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as app:
            app.connect(str(path))  # still the new collector's
    finally:
        newer.close()
        newer_file.remove()


def test_a_stop_removes_the_socket_file_it_bound(tmp_path: Path) -> None:
    path = tmp_path / "collector.sock"
    listener, bound = bind_unix(path)
    listener.close()
    assert bound.remove() == "removed" and not path.exists()
    assert bound.remove() == "gone"


def test_a_socket_that_cannot_be_made_private_is_not_left_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chmod refused after the bind (a file system without modes) failed the start and
    left the socket's file there, where apps took it for a collector's."""
    path = tmp_path / "collector.sock"

    def refused(target: object, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted", os.fspath(target))  # type: ignore[arg-type]

    monkeypatch.setattr(listen.os, "chmod", refused)
    with pytest.raises(IngestError, match="cannot set up unix socket .*Operation not permitted"):
        bind_unix(path)
    assert not path.exists()
