"""Files held once done with (``spool_held``): replayed ones that cannot be removed, and
ones with no record this release reads, which are set aside, never removed."""

from __future__ import annotations

import errno
import os
import time
import zlib
from pathlib import Path

import pytest

from audit_middleware.shipper import spool_adoption, spool_held, spool_progress
from audit_middleware.shipper.spool import Spool
from audit_middleware.shipper.spool_files import SUFFIX
from audit_middleware.shipper.spool_format import RECORD
from tests.shipper.spool_helpers import (
    batch_bodies,
    drain,
    leftovers,
    orphans,
    progress_path_of,
    reads_refused,
    spool_file_of,
    spool_files,
)


def refuse_removing_spool_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spool directory made unwritable, for removals of spool files only (their
    progress files and the rest still go)."""
    unlink = os.unlink

    def refused(path: os.PathLike[str]) -> None:
        if os.fspath(path).endswith(SUFFIX):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        unlink(path)

    monkeypatch.setattr(os, "unlink", refused)


def test_a_replayed_file_that_cannot_be_removed_is_not_sent_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A spool directory made unwritable under the app (an operator, a deploy changing
    its owner): the unlink of a file replayed whole raised out of the replay (a traceback
    logged for each file), its progress stayed short of its last batch, and whoever
    adopted it later sent that batch again."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.append(b"one") and spool.append(b"two")
    refuse_removing_spool_files(monkeypatch)
    with caplog.at_level("ERROR", logger="audit_middleware"):
        assert drain(spool) == [b"one", b"two"]
        assert spool.adopt_orphans() == 0  # held, not taken for an orphan by its own process
    said = [r.getMessage() for r in caplog.records if "cannot be removed" in r.getMessage()]
    assert len(said) == 1 and "Permission denied" in said[0], said
    monkeypatch.undo()
    spool.close()
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == []  # nothing sent twice
    assert leftovers(tmp_path) == []  # removed once it can be


def test_files_replayed_that_cannot_be_removed_hold_no_more_descriptors_than_adoption_may(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file replayed whole that cannot be removed stays open (its lock keeps it from
    being adopted again): in a directory made unwritable, each scan adopted ``ADOPT_MAX``
    more, replayed and held them, until the whole backlog was open (what ``ADOPT_MAX``
    is there to prevent). And once the directory was writable again, they stayed open
    and on disk until the process exited."""
    monkeypatch.setattr(spool_adoption, "ADOPT_MAX", 3)
    bodies = orphans(tmp_path, 10)
    refuse_removing_spool_files(monkeypatch)
    before = open_descriptors()
    spool = Spool(tmp_path, max_bytes=1 << 30)
    replayed = []
    while spool.adopt_orphans():
        replayed += drain(spool)
    assert replayed == bodies[:3]  # then no room: the others wait (not sent twice)
    assert open_descriptors() - before <= 3
    monkeypatch.undo()  # the directory is writable again: the held files go
    while not spool.empty or spool.adopt_orphans():
        replayed += drain(spool)
    assert replayed == bodies
    assert spool_files(tmp_path) == []


def test_a_scan_with_no_room_for_held_files_does_not_ask_for_another_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``orphans_left`` makes the sink scan again at its next tick (every ``max_delay``,
    50 ms) instead of every 10 s. With ``ADOPT_MAX`` files held (replayed, not removable:
    a directory made unwritable), a scan has no room and adopts nothing: it set the flag
    all the same, at every spool file it passed, so the sink listed and counted the whole
    directory 20 times a second for as long as the directory stayed unwritable."""
    monkeypatch.setattr(spool_adoption, "ADOPT_MAX", 3)
    orphans(tmp_path, 10)
    refuse_removing_spool_files(monkeypatch)
    spool = Spool(tmp_path, max_bytes=1 << 30)
    while spool.adopt_orphans():
        drain(spool)
    assert spool.adopt_orphans() == 0  # 3 held: no room
    assert not spool.orphans_left


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def unreadable_orphan(directory: Path) -> tuple[Path, bytes]:
    """A spool file left by a newer release, in a format this one cannot read."""
    future = b"AUDIT-SPOOL 2\n" + bytes(range(256)) * 8
    path = directory / f"{time.time_ns():020d}-1-0000abcd{SUFFIX}"
    path.write_bytes(future)
    return path, future


def set_aside(path: Path) -> Path:
    return path.with_name(path.name[:-len(SUFFIX)] + spool_held.UNREADABLE)


def test_a_spool_file_with_no_record_this_release_reads_is_set_aside_not_removed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file without any valid record (a newer release's format, left before a
    rollback) was counted as corrupt and deleted: the rollback destroyed the spool the
    newer release had left. It is counted, said with what to do, and kept aside now."""
    path, future = unreadable_orphan(tmp_path)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    with caplog.at_level("ERROR", logger="audit_middleware"):
        assert spool.adopt_orphans() == 1
        assert drain(spool) == []
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(path.name[:-len(SUFFIX)])]
    assert [p.read_bytes() for p in kept] == [future]  # not deleted
    assert kept == [set_aside(path)]
    assert spool.corrupt_bytes == len(future)
    said = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(said) == 1 and "rename it back" in said[0], said
    again = Spool(tmp_path, max_bytes=1 << 20)  # never adopted again, nor counted
    assert again.adopt_orphans() == 0 and again.used_bytes == 0


def test_an_unreadable_spool_file_that_cannot_be_set_aside_is_kept_until_it_can_be(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory made unwritable: the file cannot be renamed, so it is held (locked,
    like a replayed file that cannot be removed), never removed, and set aside once it
    can be."""
    path, future = unreadable_orphan(tmp_path)
    spool = Spool(tmp_path, max_bytes=1 << 20)

    def refused(*args: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(os, "rename", refused)
    assert spool.adopt_orphans() == 1
    assert drain(spool) == []
    assert path.read_bytes() == future  # not removed either
    monkeypatch.undo()
    assert spool.adopt_orphans() == 0  # its own, held: set aside at this scan
    assert not path.exists() and set_aside(path).read_bytes() == future


@pytest.mark.parametrize("torn", ["in its header", "in its body", "zeros"])
def test_a_file_of_nothing_but_its_first_batch_torn_is_removed_not_set_aside(
        tmp_path: Path, torn: str) -> None:
    """A process killed in its first batch's write (or a power loss leaving zeros) is
    this release's own damage: counted and removed as before. Set aside like another
    release's file, a crash-looping app left one per crash, by hand to remove."""
    whole = RECORD.pack(40, 0) + b'{"batch": "header"}\n' + b"x" * 20
    content = {"in its header": whole[:5], "in its body": whole[:RECORD.size + 12],
               "zeros": bytes(4096)}[torn]
    path = tmp_path / f"{time.time_ns():020d}-1-0000abcd{SUFFIX}"
    path.write_bytes(content)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.adopt_orphans() == 1
    assert drain(spool) == []
    assert spool.corrupt_bytes == len(content)
    assert not path.exists() and not set_aside(path).exists()


def test_a_newer_releases_file_half_replayed_is_set_aside_not_removed(
        tmp_path: Path) -> None:
    """A newer release replayed part of its file (its progress file, of the same form,
    beside it), then a rollback: read from that offset, nothing in it is a record of
    this release's, and a file not read from its start counted as this release's own
    torn tail: removed, the rest of the newer release's batches with it."""
    path, future = unreadable_orphan(tmp_path)
    offset = 300
    progress_path_of(path).write_bytes(spool_progress._OFFSET.pack(
        offset, zlib.crc32(offset.to_bytes(8, "big"))))
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.adopt_orphans() == 1
    assert drain(spool) == []
    assert spool.corrupt_bytes == len(future) - offset
    assert not path.exists() and set_aside(path).read_bytes() == future


def test_a_file_whose_last_batch_is_torn_past_its_progress_is_removed(
        tmp_path: Path) -> None:
    """Its process replayed every whole batch (its progress at their end), then died in
    the next one's write: the torn tail is this release's own, counted and removed,
    not set aside like a newer release's file."""
    path = spool_file_of(tmp_path, [b"one", b"two"])
    offset = path.stat().st_size
    torn = RECORD.pack(40, 0) + b'{"batch": "head'
    with path.open("ab") as f:
        f.write(torn)
    progress_path_of(path).write_bytes(spool_progress._OFFSET.pack(
        offset, zlib.crc32(offset.to_bytes(8, "big"))))
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.adopt_orphans() == 1
    assert drain(spool) == []
    assert spool.corrupt_bytes == len(torn)
    assert leftovers(tmp_path) == []


def test_a_spool_file_the_disk_cannot_read_is_tried_again_and_stops_no_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A read the disk refused (EIO: a bad block) in a spool file escaped ``peek``: the
    sink's worker logged a traceback at every try (20 a second) and never got past that
    file, so every later batch waited behind it, spooled, until the cap dropped them.
    The file is held aside now, locked (no other process adopts it meanwhile), said,
    and tried again at the next scan; the files after it are replayed meanwhile, and
    the replay is not said done while it waits."""
    first, second = orphans(tmp_path, 2)  # the files of two processes that died
    bad = spool_files(tmp_path)[0]
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.adopt_orphans() == 2
    monkeypatch.setattr(os, "pread", reads_refused(bad))
    with caplog.at_level("ERROR", logger="audit_middleware"):
        assert drain(spool) == [second]
        assert spool.replay_pending
        assert spool.adopt_orphans() == 1  # the next scan tries it again: still refused
        assert drain(spool) == []
    said = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(said) == 2 and bad.name in said[0], said
    assert spool_files(tmp_path) == [bad] and spool.corrupt_bytes == 0
    assert Spool(tmp_path, max_bytes=1 << 20).adopt_orphans() == 0  # held by its adopter
    monkeypatch.undo()  # the disk reads it again
    assert spool.adopt_orphans() == 1
    assert drain(spool) == [first]
    assert not spool.replay_pending and spool_files(tmp_path) == []


def test_a_file_held_aside_unread_still_orders_the_files_made_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are named after every file the spool holds, whatever the wall clock does:
    one held aside because the disk could not read it counts too, or a file made after
    a clock stepped back was named, and replayed, before it."""
    now = [1_800_000_000 * 10**9]
    monkeypatch.setattr(time, "time_ns", lambda: now[0])
    spool = Spool(tmp_path, max_bytes=1 << 20, file_bytes=10)  # one batch a file
    assert spool.append(b"first")
    real_pread = os.pread

    def refused(fd: int, n: int, offset: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "pread", refused)
    assert spool.peek() is None and spool.replay_pending  # held aside
    monkeypatch.setattr(os, "pread", real_pread)
    now[0] -= 3600 * 10**9
    assert spool.append(b"second")
    spool.close()
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 2
    assert drain(adopter) == [b"first", b"second"]


def test_a_read_refused_past_a_damaged_region_costs_no_scan_budget_for_the_next_try(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read refused (EIO) after the search past a damaged region had found the next
    record (counting the events lost in the region) kept the search's cost on the file,
    though nothing was skipped: each try of a file held aside paid it again, until the
    budget was spent and the next try counted the rest of the file, its valid records
    too, as corrupt. The region is paid for once, when it is skipped."""
    from audit_middleware.shipper import spool_format, spool_replay
    # Eight bytes that look like a record's header (4,096 bytes, a wrong crc32), many
    # times over: the search past them costs about 2.2 MB of budget.
    junk = b"\x00\x00\x10\x00\xff\xff\xff\xff" * 600
    first, second = batch_bodies(2)
    records = [RECORD.pack(len(b), zlib.crc32(b)) + b for b in (first, second)]
    (tmp_path / ("00000000000000000001-99-aa" + SUFFIX)).write_bytes(
        records[0] + junk + records[1])
    tmp_path.chmod(0o700)
    monkeypatch.setattr(spool_format, "_SCAN_BUDGET", 3_000_000)  # one search, not two
    counted = spool_replay._events_between

    def refused_once(fd: int, start: int, stop: int) -> int:
        monkeypatch.setattr(spool_replay, "_events_between", counted)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(spool_replay, "_events_between", refused_once)
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == [first] and adopter.replay_pending  # held aside
    assert adopter.adopt_orphans() == 1  # tried again: read this time
    assert drain(adopter) == [second]
    assert adopter.corrupt_bytes == len(junk) and not adopter.replay_pending


def test_each_spool_file_the_disk_cannot_read_is_said_at_its_own_first_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Read failures were said at the 1st, 2nd, 4th, ... of the process, whichever
    file: a file the disk refused after another had been refused for a while (4 scans
    here; a day of scans, 8,640) was not named until the process's count reached the
    next power of two, hours later. Each file's failures are counted apart now."""
    spool = Spool(tmp_path, max_bytes=1 << 20, file_bytes=10)  # one batch a file
    assert spool.append(b"first")

    def refused(fd: int, n: int, offset: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "pread", refused)
    with caplog.at_level("ERROR", logger="audit_middleware"):
        assert spool.peek() is None
        for _ in range(3):  # three more scans: still refused
            assert spool.adopt_orphans() == 1 and spool.peek() is None
        assert spool.append(b"second") and spool.peek() is None
    first, second = spool_files(tmp_path)
    said = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert [m for m in said if first.name in m] == said[:3], said  # its 1st, 2nd, 4th
    assert len(said) == 4 and second.name in said[3], said
