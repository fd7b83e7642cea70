"""How the collector tells that ``readers.json`` changed: by its stamp (inode, mtime,
ctime, size), trusted only once the file is older than a timestamp tick
(``SETTLED_NS``), as git does with its index ("racy git"). The clocks here are pinned:
a file's times come from a coarse clock, and a rewrite within its tick keeps them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from collector import readers as readers_module
from collector.readers import READERS_FILE, SETTLED_NS, Reader, Readers

#: A clock tick, as file times count them (a jiffy of 1 ms at the finest).
TICK_NS = 1_000_000
HOUR_NS = 3600 * 1_000_000_000


def newest_time(path: Path) -> int:
    st = path.stat()
    return max(st.st_mtime_ns, st.st_ctime_ns)


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def rewrite_within_the_tick(path: Path, old: str, new: str) -> None:
    """A hand edit in place (the same inode) putting ``new`` for ``old``, of the same
    length, in the same timestamp tick as the file's last write: its mtime is set back
    to the one it had, as the coarse clock would have given it."""
    assert len(new) == len(old)
    before = path.stat()
    body = path.read_bytes()
    assert old.encode() in body
    path.write_bytes(body.replace(old.encode(), new.encode()))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino, before.st_mtime_ns, before.st_size)


@pytest.mark.parametrize("dated_back_ns", [0, HOUR_NS], ids=["as_written", "mtime_set_back"])
def test_a_token_replaced_within_the_tick_of_the_last_reading_is_refused(
        tmp_path: Path, dated_back_ns: int) -> None:
    """The collector read the file within the tick in which it was written; then the
    token's hash was replaced by one of the same length, in that tick too. Its stamp as
    was (inode, mtime, size) did not change, and the revoked token kept working for good.
    ``mtime_set_back``: a copy that keeps the old file's mtime (cp -p, rsync -t) is as
    young as its ctime, which no utime sets."""
    path = tmp_path / READERS_FILE
    token = Readers(tmp_path).add("alice", root=True)  # `audit-collector users add`
    mtime = path.stat().st_mtime_ns - dated_back_ns
    os.utime(path, ns=(mtime, mtime))
    looked = newest_time(path) + TICK_NS
    serving = Readers(tmp_path, clock=lambda: looked)
    assert serving.authenticate(token) is not None
    rewrite_within_the_tick(path, sha256(token), sha256("a new token for alice"))
    assert serving.authenticate(token) is None


def test_a_young_file_is_read_at_every_look_until_it_is_settled_then_no_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Readers(tmp_path).add("alice", root=True)
    loads = count_loads(monkeypatch)
    now = [newest_time(tmp_path / READERS_FILE)]
    serving = Readers(tmp_path, clock=lambda: now[0])
    for _ in range(3):
        serving.refresh()
    assert len(loads) == 3  # each look within the file's tick could miss a change
    now[0] += SETTLED_NS + TICK_NS
    for _ in range(3):
        serving.refresh()
    assert len(loads) == 4  # one reading once settled, whose stamp then proves it


def test_a_settled_file_is_read_once_and_again_after_a_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The common case costs a stat per look: the file is read again only when it
    changes (here replaced by rename, as the CLI does, with a file of the same size)."""
    path = tmp_path / READERS_FILE
    token = Readers(tmp_path).add("alice", root=True)
    loads = count_loads(monkeypatch)
    serving = Readers(tmp_path, clock=lambda: newest_time(path) + SETTLED_NS + TICK_NS)
    for _ in range(3):
        assert serving.authenticate(token) is not None
    assert len(loads) == 1
    edited = tmp_path / "readers.json.new"
    edited.write_bytes(path.read_bytes().replace(sha256(token).encode(),
                                                 sha256("a new token for alice").encode()))
    os.replace(edited, path)
    assert serving.authenticate(token) is None
    assert len(loads) == 2


def test_a_file_dated_ahead_of_the_clock_is_settled_by_its_ctime(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An mtime a year ahead (``touch -d``; ``cp -p`` or ``rsync -t`` from a host whose
    clock is ahead) had the file read at every request until that date. No write gives
    such an mtime, and a later write sets it back to now: the ctime dates the change.
    A same-size edit in place within the ctime's tick is still seen, by that mtime."""
    path = tmp_path / READERS_FILE
    token = Readers(tmp_path).add("alice", root=True)
    ahead = path.stat().st_mtime_ns + 365 * 24 * HOUR_NS
    os.utime(path, ns=(ahead, ahead))
    changed = path.stat().st_ctime_ns
    loads = count_loads(monkeypatch)
    serving = Readers(tmp_path, clock=lambda: changed + SETTLED_NS + TICK_NS)
    for _ in range(3):
        assert serving.authenticate(token) is not None
    assert len(loads) == 1
    body = path.read_bytes()
    path.write_bytes(body.replace(sha256(token).encode(),
                                  sha256("a new token for alice").encode()))
    assert path.stat().st_size == len(body)
    assert serving.authenticate(token) is None


def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The readings of ``readers.json`` from now on (each a read and a parse)."""
    loads: list[Path] = []
    real = readers_module._load

    def counted(path: Path) -> list[Reader]:
        loads.append(path)
        return real(path)

    monkeypatch.setattr(readers_module, "_load", counted)
    return loads
