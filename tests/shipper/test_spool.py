"""The shipper's disk spool: append-only, in order, size-capped, torn tails survived, and
files of dead processes adopted (never those of live ones)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import re
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

import pytest

from audit_middleware.shipper import (
    spool_adoption,
    spool_cap,
    spool_format,
    spool_held,
    spool_progress,
)
from audit_middleware.shipper import spool_files as spool_files_module
from audit_middleware.shipper.spool import Spool
from audit_middleware.shipper.spool_files import SUFFIX
from audit_middleware.shipper.spool_format import _RECORD_START as RECORD_START
from audit_middleware.shipper.spool_format import RECORD
from audit_middleware.wire import encode_batch_body


def drain(spool: Spool) -> list[bytes]:
    out = []
    while (body := spool.peek()) is not None:
        out.append(body)
        spool.commit()
    return out


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*" + SUFFIX))


def leftovers(directory: Path) -> list[str]:
    """What is in a spool directory but its adoption lock (made once, and kept: see
    ``spool.ADOPTING``)."""
    return sorted(p.name for p in directory.iterdir()
                  if not p.name.startswith(spool_adoption.ADOPTING))


def spool_file_of(directory: Path, bodies: Iterable[bytes], **options: int) -> Path:
    """The one spool file a closed ``Spool`` in ``directory`` wrote ``bodies`` to."""
    spool = Spool(directory, **{"max_bytes": 1 << 20, **options})
    for body in bodies:
        assert spool.append(body)
    spool.close()
    (path,) = spool_files(directory)
    return path


def test_records_come_back_in_append_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    bodies = [f"batch {i}\n".encode() * (i + 1) for i in range(50)]
    for body in bodies:
        assert spool.append(body)
    assert drain(spool) == bodies
    assert spool.empty


def test_a_record_stays_until_committed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"one")
    spool.append(b"two")
    assert spool.peek() == b"one"
    assert spool.peek() == b"one"  # not acknowledged yet: offered again
    spool.commit()
    assert spool.peek() == b"two"


def test_files_are_private_and_deleted_once_replayed(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, max_bytes=1 << 20, file_bytes=100)
    for i in range(10):
        spool.append(bytes([65 + i]) * 60)  # one record per file at this file size
    files = spool_files(directory)
    assert len(files) == 10
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {"0o600"}
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert spool.used_bytes == 10 * (60 + RECORD.size)
    assert len(drain(spool)) == 10
    assert spool_files(directory) == []
    assert spool.used_bytes == 0


def test_a_spool_seen_empty_has_its_bytes_counted_off(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The last file leaves the spool with an unlink, which releases the GIL: a reader
    without the worker's lock (stats) must not see it empty with its bytes still used
    (spool_bytes != 0 after wait_for_delivery: a rare flake)."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"x" * 1000)
    seen: list[tuple[bool, int]] = []
    unlink = os.unlink

    def watched_unlink(path: os.PathLike[str]) -> None:
        seen.append((spool.empty, spool.used_bytes))  # what another thread could see now
        unlink(path)

    monkeypatch.setattr(os, "unlink", watched_unlink)
    assert drain(spool) == [b"x" * 1000]
    assert seen == [(True, 0)]


def test_append_refuses_beyond_the_size_cap(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=3 * (100 + RECORD.size), file_bytes=150)
    assert [spool.append(b"x" * 100) for _ in range(4)] == [True, True, True, False]
    spool.peek()
    spool.commit()
    assert spool.append(b"x" * 100)  # room again once a file was replayed and deleted


def test_a_torn_tail_is_counted_and_the_records_before_it_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"first")
    spool.append(b"second")
    spool.close()
    (path,) = spool_files(tmp_path)
    with open(path, "ab") as f:
        f.write(RECORD.pack(1000, 0) + b"half a record")  # a crash in the middle of a write
    recovered = Spool(tmp_path, max_bytes=1 << 20)
    assert recovered.adopt_orphans() == 1
    assert drain(recovered) == [b"first", b"second"]
    assert recovered.corrupt_bytes == RECORD.size + len(b"half a record")
    assert spool_files(tmp_path) == []


def test_a_zero_filled_tail_is_corrupt_not_records_of_nothing(tmp_path: Path) -> None:
    """A power loss can leave zeros where the file's size reached the disk before its
    data (XFS, ext4 data=writeback). Eight zero bytes read as a record of length 0 whose
    crc32 (of nothing) matched: 512 empty 'batches', and a negative dropped count."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"first")
    spool.close()
    (path,) = spool_files(tmp_path)
    with open(path, "ab") as f:
        f.write(bytes(4096))
    recovered = Spool(tmp_path, max_bytes=1 << 20)
    assert recovered.adopt_orphans() == 1
    assert drain(recovered) == [b"first"]
    assert recovered.corrupt_bytes == 4096


def test_a_file_replayed_and_deleted_while_another_process_opened_it_is_not_adopted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between a scanner's open and its lock, the owner may replay the file whole,
    unlink it and close it (which frees the lock): the scanner then adopted the dead
    file and sent its batches again (a review helper)."""
    import fcntl

    old = Spool(tmp_path, max_bytes=1 << 20)
    old.append(b"a")
    old.append(b"b")
    old.close()
    owner = Spool(tmp_path, max_bytes=1 << 20)
    assert owner.adopt_orphans() == 1
    real_flock = fcntl.flock
    finished: list[list[bytes]] = []

    def owner_finishes_first(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_NB and not finished:
            finished.append(drain(owner))  # unlinks, then closes: the lock comes free
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", owner_finishes_first)
    scanner = Spool(tmp_path, max_bytes=1 << 20)
    assert scanner.adopt_orphans() == 0
    assert finished == [[b"a", b"b"]] and scanner.peek() is None


def test_a_corrupt_record_stops_replay_of_that_file_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, file_bytes=30)
    spool.append(b"a" * 20)
    spool.append(b"b" * 20)
    spool.close()
    first, _ = spool_files(tmp_path)
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF  # flip a byte: the checksum no longer matches
    first.write_bytes(bytes(data))
    recovered = Spool(tmp_path, max_bytes=1 << 20)
    recovered.adopt_orphans()
    assert drain(recovered) == [b"b" * 20]
    assert recovered.corrupt_bytes == 20 + RECORD.size


def records_of(path: Path) -> list[tuple[int, int]]:
    """(offset, length in all) of each record of a spool file, as written."""
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        length, _ = RECORD.unpack_from(data, pos)
        out.append((pos, RECORD.size + length))
        pos += RECORD.size + length
    return out


def three_records(tmp_path: Path) -> Path:
    path = spool_file_of(tmp_path, (b"first", b"second", b"third"))
    return path


def test_a_corrupt_record_in_the_middle_loses_only_itself(tmp_path: Path) -> None:
    """A record whose checksum fails made the reader skip the rest of its file: every
    record after it was lost, seen only in ``corrupt_bytes`` (a review helper). The
    reader now finds the next valid record (length, crc32, body) and goes on there."""
    path = three_records(tmp_path)
    (_, _), (second, size), _ = records_of(path)
    data = bytearray(path.read_bytes())
    data[second + RECORD.size + 2] ^= 0xFF  # the second body: its crc32 fails
    path.write_bytes(bytes(data))
    recovered = Spool(tmp_path, max_bytes=1 << 20)
    assert recovered.adopt_orphans() == 1
    assert drain(recovered) == [b"first", b"third"]
    assert recovered.corrupt_bytes == size
    assert spool_files(tmp_path) == []


@pytest.mark.parametrize("damage", ["length", "garbage", "zeros", "random"])
def test_a_garbled_region_is_skipped_to_the_next_valid_record(tmp_path: Path,
                                                                 damage: str) -> None:
    """A torn or garbled region (a wrong length, bytes that are no record, a zeroed
    sector) in the middle of a file: what follows it is still replayed."""
    path = three_records(tmp_path)
    (_, _), (second, size), _ = records_of(path)
    data = bytearray(path.read_bytes())
    if damage == "length":  # a length pointing past the end of the file
        data[second:second + 4] = (1 << 20).to_bytes(4, "big")
        lost = size
    elif damage == "garbage":
        data[second:second] = b"\x00\x00\x00\x03abcdefgh\x00junk"
        lost = 17 + size
        data[second + 17:second + 17 + size] = bytes(size)  # and the record zeroed
    elif damage == "zeros":
        data[second:second + size] = bytes(size)
        lost = size
    else:
        noise = bytes(random.Random(7).getrandbits(8) for _ in range(70_000))
        data[second:second + size] = noise
        lost = len(noise)
    path.write_bytes(bytes(data))
    recovered = Spool(tmp_path, max_bytes=1 << 20)
    assert recovered.adopt_orphans() == 1
    assert drain(recovered) == [b"first", b"third"]
    assert recovered.corrupt_bytes == lost


def test_the_events_of_a_corrupt_region_are_counted_when_their_header_is_readable(
        tmp_path: Path) -> None:
    bodies = [encode_batch_body("app:1:ab", [i * 3 + 1, i * 3 + 2, i * 3 + 3],
                                [b'{"n":%d}\n' % j for j in range(3)]) for i in range(3)]
    path = spool_file_of(tmp_path, bodies)
    (_, _), (second, size), _ = records_of(path)
    data = bytearray(path.read_bytes())
    data[second + size - 3] ^= 0xFF  # an event line of the second record
    path.write_bytes(bytes(data))
    recovered = Spool(tmp_path, max_bytes=1 << 20)
    recovered.adopt_orphans()
    assert drain(recovered) == [bodies[0], bodies[2]]
    assert (recovered.corrupt_bytes, recovered.lost_events) == (size, 3)


def test_files_left_by_a_closed_spool_are_adopted_oldest_first(tmp_path: Path) -> None:
    old = Spool(tmp_path, max_bytes=1 << 20, file_bytes=10)
    for i in range(3):
        old.append(f"old-{i}".encode())
    old.close()
    new = Spool(tmp_path, max_bytes=1 << 20)
    new.append(b"new")  # appending first scans for orphans: the old files go first
    assert drain(new) == [b"old-0", b"old-1", b"old-2", b"new"]


def test_files_of_a_live_process_are_never_adopted(tmp_path: Path) -> None:
    owner = Spool(tmp_path, max_bytes=1 << 20)
    owner.append(b"mine")
    other = Spool(tmp_path, max_bytes=1 << 20)
    assert other.adopt_orphans() == 0
    assert other.peek() is None
    assert owner.peek() == b"mine"


def test_a_forked_child_keeps_its_hands_off_the_parents_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"parent's")
    pid = os.fork()
    if pid == 0:  # child
        spool.after_fork()
        ok = spool.peek() is None and spool.adopt_orphans() == 0 and spool.append(b"child's")
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert spool.peek() == b"parent's"  # the parent's lock survived the child closing its copy
    spool.commit()
    assert spool.adopt_orphans() == 1  # the child exited: its file is an orphan now
    assert drain(spool) == [b"child's"]


def test_a_child_forked_while_its_parent_adopts_lets_go_of_the_adopted_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork between a file's lock and its entry in the spool's list (another thread
    adopting): after_fork did not close the child's copy, so once the parent died the
    child kept the orphan locked, and no process could adopt it for the child's life."""
    import fcntl

    code = ("import os, sys\nfrom audit_middleware.shipper.spool import Spool\n"
            "Spool(sys.argv[1], max_bytes=1 << 20).append(b'orphan')\nos._exit(9)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    child: list[int] = []
    real_flock = fcntl.flock
    ready, told = os.pipe()  # the child says when its fork hook has run

    class ForkAfterLocking:
        def __getattr__(self, name: str) -> object:
            return getattr(fcntl, name)

        @staticmethod
        def flock(fd: int, operation: int) -> None:
            real_flock(fd, operation)
            # The spool file's lock, not the adoption lock taken before it: forked at
            # that one, the adopted file was not open yet, and this tested nothing.
            if child or not os.readlink(f"/proc/self/fd/{fd}").endswith(SUFFIX):
                return
            pid = os.fork()
            if pid == 0:  # the child: what the shipper's fork hook does, then lives on
                adopter.after_fork()
                os.write(told, b"x")
                time.sleep(3)
                os._exit(0)
            child.append(pid)

    monkeypatch.setattr(spool_adoption, "fcntl", ForkAfterLocking())
    assert adopter.adopt_orphans() == 1
    monkeypatch.undo()
    adopter.close()  # the parent dies (its descriptors closed), the child lives on
    try:
        assert os.read(ready, 1) == b"x"
        assert Spool(tmp_path, max_bytes=1 << 20).adopt_orphans() == 1
    finally:
        os.waitpid(child[0], 0)
        os.close(ready)
        os.close(told)


def test_a_crashed_process_leaves_files_others_adopt(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from audit_middleware.shipper.spool import Spool\n"
        "s = Spool(sys.argv[1], max_bytes=1 << 20)\n"
        "s.append(b'from the crashed process')\n"
        "os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    survivor = Spool(tmp_path, max_bytes=1 << 20)
    assert drain(survivor) == []  # nothing adopted yet: adoption is an explicit scan
    assert survivor.adopt_orphans() == 1
    assert drain(survivor) == [b"from the crashed process"]


def test_a_spool_directory_others_can_write_is_not_trusted(tmp_path: Path) -> None:
    """Whoever else can write the directory can plant batches that would be replayed to
    the collector under this app's name. A shared directory is common (a volume mounted
    0777; one made by a server's root master whose workers run as another user), so it
    is not refused: this user spools in a private subdirectory of it, and never adopts
    what lies in the shared one."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    planted = Spool(tmp_path / "elsewhere", max_bytes=1 << 20)
    planted.append(b'{"forged": true}')  # a batch file made by "someone else"
    planted.close()
    for f in spool_files(tmp_path / "elsewhere"):
        f.rename(shared / f.name)
    spool = Spool(shared, max_bytes=1 << 20)
    private = shared / f".uid-{os.geteuid()}"
    assert spool.directory == private
    assert spool.adopt_orphans() == 0
    assert spool.append(b"ours")
    assert oct(private.stat().st_mode & 0o777) == "0o700"
    assert drain(spool) == [b"ours"]
    shared.chmod(0o755)  # its owner makes it theirs alone: then it is theirs to replay
    fixed = Spool(shared, max_bytes=1 << 20)
    assert fixed.adopt_orphans() == 1 and drain(fixed) == [b'{"forged": true}']


def test_a_spool_directory_made_shared_later_is_not_trusted_either(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, max_bytes=1 << 20)  # not there yet: it would be made 0700
    directory.mkdir()
    directory.chmod(0o777)  # made by someone else meanwhile
    assert spool.append(b"batch")
    assert spool_files(directory) == []  # not in the shared directory itself
    assert len(spool_files(directory / f".uid-{os.geteuid()}")) == 1


def test_a_partial_file_is_removed_only_once_it_is_surely_abandoned(tmp_path: Path) -> None:
    """A file another process has just created but not yet locked looks abandoned: taken
    for it and deleted, that process's batch was lost. Only old partial files go."""
    fresh = tmp_path / "00000000000000000001-99-aa.spool-new"
    old = tmp_path / "00000000000000000000-98-bb.spool-new"
    fresh.write_bytes(b"")
    old.write_bytes(b"")
    long_ago = time.time() - spool_adoption.PARTIAL_GRACE - 10
    os.utime(old, (long_ago, long_ago))
    assert Spool(tmp_path, max_bytes=1 << 20).adopt_orphans() == 0
    assert fresh.exists() and not old.exists()


def test_the_spool_directory_is_chosen_for_each_effective_user(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn --preload --user app: the sink is made in the root master, and the
    workers spool as app. Each effective user gets its own choice: the configured
    directory where it is that user's, a private subdirectory where it is not."""
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o755)
    owner = os.geteuid()
    spool = Spool(directory, max_bytes=1 << 20)
    assert spool.directory == directory
    monkeypatch.setattr(os, "geteuid", lambda: owner + 4242)  # another user
    assert spool.directory == directory / f".uid-{owner + 4242}"
    monkeypatch.setattr(os, "geteuid", lambda: owner)
    assert spool.directory == directory


@pytest.mark.parametrize("taken_by", ["a symbolic link", "another user's directory"])
def test_a_private_subdirectory_taken_first_makes_the_place_unusable_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken_by: str) -> None:
    """In a spool directory others can write (the 1733 the docs offer), another user may
    make this user's .uid-<uid> first: a directory of theirs, or a symbolic link to one.
    The spool refuses it when it spools, but check_place took it for usable (its user
    can write there): nothing said, spool_unusable 0, until the outage dropped every
    batch."""
    directory = tmp_path / "spool"
    directory.mkdir()
    directory.chmod(0o1777)  # others may make entries: this user spools in .uid-<uid>
    if taken_by == "a symbolic link":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        (directory / f".uid-{os.geteuid()}").symlink_to(elsewhere)
    else:  # made by this test's user, seen by a spool of another
        worker = os.geteuid() + 4242
        (directory / f".uid-{worker}").mkdir(mode=0o700)
        monkeypatch.setattr(os, "geteuid", lambda: worker)
    spool = Spool(directory, max_bytes=1 << 20)
    assert not spool.append(b"batch")  # refused where it would spool
    problem = spool.check_place()
    assert f".uid-{os.geteuid()}" in problem and "cannot be used" in problem


def test_batches_are_never_stranded_silently_when_the_directory_changes_hands(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Made shared after batches were spooled in it: they are not replayed (anyone could
    have put them there), and an error says how many and what to do. Made private again:
    what was spooled in the private subdirectory meanwhile is replayed too."""
    directory = tmp_path / "spool"
    first = Spool(directory, max_bytes=1 << 20)
    assert first.append(b"before")
    first.close()
    directory.chmod(0o777)
    shared = Spool(directory, max_bytes=1 << 20)
    assert shared.adopt_orphans() == 0
    assert "1 batch file(s) in" in caplog.text and "chmod go-w" in caplog.text
    assert shared.append(b"meanwhile")  # into .uid-<euid>
    shared.close()
    directory.chmod(0o700)
    private_again = Spool(directory, max_bytes=1 << 20)
    assert private_again.adopt_orphans() == 2
    assert drain(private_again) == [b"before", b"meanwhile"]


def test_a_private_subdirectory_planted_as_a_symlink_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (shared / f".uid-{os.geteuid()}").symlink_to(elsewhere)  # by "another user"
    spool = Spool(shared, max_bytes=1 << 20)
    assert not spool.append(b"batch")
    assert spool.adopt_orphans() == 0
    assert list(elsewhere.iterdir()) == []
    assert "symbolic link" in caplog.text


def test_a_spool_directory_it_cannot_read_is_an_error_not_a_crash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    refuse_scans(monkeypatch)
    assert spool.adopt_orphans() == 0
    assert "cannot read" in caplog.text and "Permission denied" in caplog.text


def refuse_scans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing any directory fails as for a directory this user cannot read."""
    def refused(path: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", refused)


def test_an_orphan_that_cannot_be_claimed_is_let_go_and_the_scan_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """An OSError from an orphan's fstat (EIO, an NFS ESTALE) escaped adopt_orphans: the
    files claimed before it in that scan stayed open and locked for the process's life,
    replayed by nobody, and so did the one that failed. Now that one is let go (said)
    and the others adopted; a later scan takes it."""
    writer = Spool(tmp_path, max_bytes=1 << 20, file_bytes=1)  # a file for each batch
    for body in (b"first", b"second", b"third"):
        assert writer.append(body)
    writer.close()
    failing = spool_files(tmp_path)[1]

    class FstatFails:
        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        @staticmethod
        def fstat(fd: int) -> os.stat_result:
            if os.readlink(f"/proc/self/fd/{fd}") == str(failing):
                raise OSError(errno.EIO, "Input/output error")
            return os.fstat(fd)

    monkeypatch.setattr(spool_adoption, "os", FstatFails())
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 2
    monkeypatch.undo()
    assert f"cannot adopt {failing}" in caplog.text and "Input/output error" in caplog.text
    fd = os.open(failing, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # not held: let go at once
    finally:
        os.close(fd)
    assert drain(adopter) == [b"first", b"third"]
    assert adopter.adopt_orphans() == 1 and drain(adopter) == [b"second"]


def test_a_close_that_fails_while_claiming_is_not_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() that reports an error (EIO: NFS, FUSE) has still freed the descriptor.
    A failed close in a claim was retried by the claim's error path: a second close of
    that number, which another thread may have reused meanwhile (its socket closed)."""
    live = Spool(tmp_path, max_bytes=1 << 20)
    assert live.append(b"held by a live process")  # its lock is taken: not an orphan
    closes: list[int] = []

    class CloseFails:
        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        @staticmethod
        def close(fd: int) -> None:
            closes.append(fd)
            spool_file = os.readlink(f"/proc/self/fd/{fd}").endswith(SUFFIX)
            os.close(fd)
            if spool_file:
                raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_files_module, "os", CloseFails())
    assert Spool(tmp_path, max_bytes=1 << 20).adopt_orphans() == 0
    monkeypatch.undo()
    live.close()
    assert closes and len(closes) == len(set(closes))


def test_an_orphan_whose_progress_cannot_be_checked_does_not_end_the_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A progress file's check (does its spool file still exist?) raised any error but
    ENOENT (EIO) out of adopt_orphans: the orphans claimed before it in that scan stayed
    open and locked for the process's life, replayed by nobody. Now said, left for a
    later scan, and the scan goes on."""
    writer = Spool(tmp_path, max_bytes=1 << 20)
    assert writer.append(b"one") and writer.append(b"two")
    writer.close()
    replayer = Spool(tmp_path, max_bytes=1 << 20)
    assert replayer.adopt_orphans() == 1
    assert replayer.peek() == b"one"
    replayer.commit()  # its progress file is written beside it
    replayer.close()
    later = Spool(tmp_path, max_bytes=1 << 20, file_bytes=1)
    assert later.append(b"three")
    later.close()
    first = spool_files(tmp_path)[0]
    real_stat = os.stat

    def stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if os.fspath(path) == str(first):  # type: ignore[arg-type]
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    adopter = Spool(tmp_path, max_bytes=1 << 20)
    monkeypatch.setattr(os, "stat", stat)
    adopted = adopter.adopt_orphans()
    monkeypatch.undo()
    assert adopted == 2 and "Input/output error" in caplog.text
    assert drain(adopter) == [b"two", b"three"]


def test_a_forked_child_says_its_own_first_scan_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Scan failures are said at the 1st, 2nd, 4th, ... in a process, but the count was
    inherited at a fork: after 4 in the parent (a preloading master's scan at start), a
    worker's first was its 5th, and not said."""
    spool = Spool(tmp_path, max_bytes=1 << 20)

    def refused(path: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", refused)
    for _ in range(4):
        assert spool.adopt_orphans() == 0
    caplog.clear()
    spool.after_fork()  # what the child's fork hook does
    assert spool.adopt_orphans() == 0
    said = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(said) == 1 and "so far" not in said[0]


def test_a_scan_that_cannot_read_the_directory_says_so_at_1_2_4_8_scans(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Said at each scan (every 10 s) for as long as the directory stayed unreadable."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    refuse_scans(monkeypatch)
    for _ in range(8):
        assert spool.adopt_orphans() == 0
    said = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(said) == 4 and "said again at 16" in said[-1]


def test_batch_files_stranded_in_a_shared_directory_are_said_once_until_they_change(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Said at every scan (every 10 s) while the directory stayed shared: an error log
    line per worker every 10 s, which buried everything else."""
    directory = tmp_path / "spool"
    first = Spool(directory, max_bytes=1 << 20, file_bytes=1)
    assert first.append(b"before")
    first.close()
    directory.chmod(0o777)
    shared = Spool(directory, max_bytes=1 << 20)

    def said() -> int:
        return sum("batch file(s) in" in r.getMessage() for r in caplog.records)

    for _ in range(3):
        assert shared.adopt_orphans() == 0
    assert said() == 1
    directory.chmod(0o700)  # a second one stranded there meanwhile
    second = Spool(directory, max_bytes=1 << 20)
    assert second.append(b"another")
    second.close()
    directory.chmod(0o777)
    assert shared.adopt_orphans() == 0
    assert said() == 2 and "2 batch file(s) in" in caplog.records[-1].getMessage()


# -- replay progress, the cost of damage, failed appends (a review's four defects) ------
def batch_bodies(count: int, events: int = 3) -> list[bytes]:
    return [encode_batch_body("app:1:ab", [i * events + j + 1 for j in range(events)],
                              [b'{"n":%d}\n' % j for j in range(events)])
            for i in range(count)]


class CountedParses:
    """``orjson`` whose ``loads`` counts the bytes it is given."""

    def __init__(self) -> None:
        import orjson

        self.orjson = orjson
        self.bytes = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.orjson, name)

    def loads(self, data: bytes) -> object:
        self.bytes += len(data)
        return self.orjson.loads(data)


@pytest.mark.parametrize("unit", [b'{"source":', b'{"source":"', b'{"source":"a","seqs":['])
def test_counting_the_events_of_a_corrupt_region_is_linear_in_its_size(
        monkeypatch: pytest.MonkeyPatch, unit: bytes) -> None:
    """Each ``{"source":`` of a region was parsed up to the next newline (or the end):
    k of them without a newline cost k x n."""
    region = unit * 20_000
    parses = CountedParses()
    monkeypatch.setattr(spool_format, "orjson", parses)
    assert spool_format._events_in(region) == 0
    assert parses.bytes <= len(region)
    good = batch_bodies(2)  # and the headers that are there are still counted
    odd = encode_batch_body('a "b"\\\n\u00e9', [1, 2], [b"{}\n"] * 2, numbered=7)
    assert spool_format._events_in(region + good[0] + region + good[1] + odd) == 8


def damaged_spool(tmp_path: Path, bodies: list[bytes], damaged: set[int]) -> Path:
    """One spool file of ``bodies``, the records numbered in ``damaged`` with a byte of
    their last event line flipped (their crc32 fails; their header stays readable)."""
    path = spool_file_of(tmp_path, bodies, max_bytes=1 << 30,
                         file_bytes=1 << 30)
    data = bytearray(path.read_bytes())
    for i, (offset, size) in enumerate(records_of(path)):
        if i in damaged:
            data[offset + size - 3] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


class CountedReads:
    """``os.pread`` counting the bytes it returns (the work of a replay)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.largest = 0  # the most read at once
        self.pread = os.pread

    def __call__(self, fd: int, n: int, offset: int) -> bytes:
        data = self.pread(fd, n, offset)
        self.bytes += len(data)
        self.largest = max(self.largest, len(data))
        return data


@pytest.mark.parametrize("damage", ["flipped", "junk"])
def test_many_damaged_records_cost_a_replay_reads_in_proportion_to_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    """Each damaged region re-read the rest of its file to look for the next record:
    k regions in a file of n bytes read k x n/2 bytes (quadratic)."""
    bodies = batch_bodies(400, events=20)
    path = damaged_spool(tmp_path, bodies, set(range(1, 400, 2)) if damage == "flipped"
                         else set())
    if damage == "junk":  # bytes that are no record before every other record: a scan
        data = path.read_bytes()
        parts, last = [], 0
        for i, (offset, _) in enumerate(records_of(path)):
            if i % 2:
                parts += [data[last:offset], b"junk"]
                last = offset
        path.write_bytes(b"".join(parts) + data[last:])
    size = path.stat().st_size
    reads = CountedReads()
    monkeypatch.setattr(os, "pread", reads)
    adopter = Spool(tmp_path, max_bytes=1 << 30)
    adopter.adopt_orphans()
    replayed = drain(adopter)
    assert len(replayed) == (200 if damage == "flipped" else 400)
    assert reads.bytes < 4 * size, (reads.bytes, size)


class CountedChecksums:
    """``zlib`` whose ``crc32`` counts the bytes it checks (the scan's work)."""

    def __init__(self) -> None:
        self.bytes = 0

    def __getattr__(self, name: str) -> object:
        return getattr(zlib, name)

    def crc32(self, data: bytes | memoryview) -> int:
        self.bytes += len(data)
        return zlib.crc32(data)


def test_the_scan_budget_bounds_the_work_of_a_whole_file_not_of_each_region(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget bounding the search for the next record was given anew to each
    damaged region: k regions that each cost half of it cost k/2 budgets. It is the
    file's now; past it the rest of the file is counted as corrupt."""
    # Eight bytes that look like a record's header (4,096 bytes, a wrong crc32), many
    # times over: each one whose claimed end is followed by a NUL costs a crc32.
    unit = b"\x00\x00\x10\x00\xff\xff\xff\xff"
    junk = unit * 600
    bodies = batch_bodies(21)
    path = tmp_path / ("00000000000000000001-99-aa" + SUFFIX)
    records = [RECORD.pack(len(b), zlib.crc32(b)) + b for b in bodies]
    path.write_bytes(records[0] + b"".join(junk + r for r in records[1:]))
    tmp_path.chmod(0o700)
    checksums = CountedChecksums()
    monkeypatch.setattr(spool_format, "zlib", checksums)
    # A region costs about 4.3 MB of budget (1,800 places at 1 KiB each, and the
    # crc32s of the claimed records followed by a NUL): 20 of them, more than twice
    # this file's budget.
    budget = 10_000_000
    monkeypatch.setattr(spool_format, "_SCAN_BUDGET", budget)
    adopter = Spool(tmp_path, max_bytes=1 << 30)
    adopter.adopt_orphans()
    replayed = drain(adopter)
    size = sum(map(len, records)) + 20 * len(junk)
    assert checksums.bytes <= budget + size  # the budget, and the file read once
    assert 1 < len(replayed) < len(bodies)
    assert adopter.corrupt_bytes == size - sum(map(len, records[:len(replayed)]))


def failing(error: int, calls: list[str], name: str) -> object:
    """A system call that fails with ``error`` (the disk's fault, injected)."""
    def fail(*args: object) -> object:
        calls.append(name)
        raise OSError(error, os.strerror(error))
    return fail


def test_a_batch_whose_fsync_failed_and_could_not_be_removed_is_kept_not_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync EIO, then a failed truncate: append said False (the caller counts the
    batch dropped), yet the whole record stayed in the file past its known end, and a
    process adopting the file replayed it: dropped and delivered."""
    bodies = batch_bodies(2)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.append(bodies[0])
    calls: list[str] = []
    monkeypatch.setattr(os, "fsync", failing(errno.EIO, calls, "fsync"))
    monkeypatch.setattr(os, "ftruncate", failing(errno.EIO, calls, "ftruncate"))
    kept = spool.append(bodies[1])
    monkeypatch.undo()
    assert calls[:2] == ["fsync", "ftruncate"]
    spool.close()  # the process exits before replaying it
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    adopter.adopt_orphans()
    delivered = drain(adopter)
    assert delivered[0] == bodies[0]
    # Counted dropped (False) exactly when it is not delivered.
    assert kept == (bodies[1] in delivered)
    assert (kept, adopter.corrupt_bytes) == (True, 0)


def test_a_batch_after_one_that_could_not_be_removed_does_not_tear_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next append wrote at the known end, over the record that stayed: a shorter
    one left the rest of it behind, found corrupt by the process that adopted the file
    (spool_corrupt_bytes, wait_for_delivery False) for a batch already counted dropped."""
    (first, small), big = batch_bodies(2), batch_bodies(1, events=50)[0]
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.append(first)
    monkeypatch.setattr(os, "fsync", failing(errno.EIO, [], "fsync"))
    monkeypatch.setattr(os, "ftruncate", failing(errno.EIO, [], "ftruncate"))
    kept = spool.append(big)
    monkeypatch.undo()
    assert spool.append(small)
    spool.close()
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    adopter.adopt_orphans()
    assert drain(adopter) == ([first, big, small] if kept else [first, small])
    assert adopter.corrupt_bytes == 0


def append_torn(spool: Spool, cut: str, *failing_too: str) -> tuple[bool, int]:
    """A batch of one event appended, then one of 50 whose write is cut short (EIO)
    ``cut`` "after its header" (the record's 8-byte header and half its body) or "in
    its header" (40 bytes of its header line), and whose bytes cannot be truncated away
    (nor can each of the ``os`` calls ``failing_too`` be made). Whether ``append`` kept
    the torn batch, and the bytes of it written."""
    body = batch_bodies(1, events=50)[0]
    assert spool.append(batch_bodies(1)[0])
    real_pwrite = os.pwrite
    written = RECORD.size + (len(body) // 2 if cut == "after its header" else 40)
    assert body.index(b"\n") > 40  # the header line is longer than that

    def torn(fd: int, data: bytes, offset: int) -> int:
        if len(data) < len(body):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pwrite(fd, bytes(data)[:written], offset)

    with pytest.MonkeyPatch.context() as patched:  # undone before the spool is read
        patched.setattr(os, "pwrite", torn)
        for name in ("ftruncate", *failing_too):
            patched.setattr(os, name, failing(errno.EIO, [], name))
        return spool.append(body), written


@pytest.mark.parametrize("cut", ["after its header", "in its header"])
def test_a_torn_batch_that_could_not_be_removed_is_counted_lost_once(
        tmp_path: Path, cut: str) -> None:
    """A write cut short (EIO) whose bytes could not be truncated away: the caller
    counted the batch dropped, and whoever read the file later counted its events lost
    again (its header was readable). Cut in its header line, it was then counted
    spooled by the caller, and nobody could count its events: lost, counted nowhere."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    kept, written = append_torn(spool, cut)
    spool.close()
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    adopter.adopt_orphans()
    assert len(drain(adopter)) == 1
    counted_by_caller = 0 if kept else 50
    assert counted_by_caller + adopter.lost_events == 50
    assert adopter.corrupt_bytes == written


def test_a_process_that_adopts_a_half_replayed_file_goes_on_where_its_owner_stopped(
        tmp_path: Path) -> None:
    """Read progress lived in memory: a process that died after replaying part of a
    damaged file (its records acknowledged, its corrupt region counted) left a file the
    next process replayed from the start. Acknowledged batches were sent again, and the
    corrupt region counted again: ``dropped`` inflated across processes."""
    bodies = batch_bodies(3)
    damaged_spool(tmp_path, bodies, {1})
    code = ("import json, os, sys\nfrom audit_middleware.shipper.spool import Spool\n"
            "s = Spool(sys.argv[1], max_bytes=1 << 30)\nassert s.adopt_orphans() == 1\n"
            "first = s.peek()\ns.commit()\n"
            "third = s.peek()  # past the corrupt record, counted; not acknowledged\n"
            "print(json.dumps([first.decode(), third.decode(), s.lost_events]))\n"
            "sys.stdout.flush()\nos._exit(9)  # dies before the third is acknowledged\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False,
                         capture_output=True, text=True)
    first, third, lost = json.loads(out.stdout)
    assert (first.encode(), third.encode(), lost) == (bodies[0], bodies[2], 3)
    adopter = Spool(tmp_path, max_bytes=1 << 30)
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == [bodies[2]]  # the acknowledged first one is not sent again
    assert (adopter.corrupt_bytes, adopter.lost_events) == (0, 0)  # counted once, above
    assert leftovers(tmp_path) == []  # the progress file went with its spool file


def test_a_damaged_region_is_logged_even_if_its_process_dies_once_past_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The progress past a damaged region was written before the region was logged: a
    process killed in between had counted it in memory only, and its adopter went on
    past it: a loss logged nowhere, counted in no living process."""
    bodies = batch_bodies(3)
    damaged_spool(tmp_path, bodies, {1})
    code = ("import logging, os, sys\n"
            "logging.basicConfig(stream=sys.stderr, level=logging.ERROR)\n"
            "from audit_middleware.shipper import spool\n"
            "s = spool.Spool(sys.argv[1], max_bytes=1 << 30)\nassert s.adopt_orphans() == 1\n"
            "s.peek()\ns.commit()\nsave = spool.Spool._save_progress\n"
            "def killed_once_saved(self, f):\n"
            "    save(self, f)\n"
            "    os._exit(9)  # a SIGKILL right after the progress write\n"
            "spool.Spool._save_progress = killed_once_saved\n"
            "s.peek()  # skips the damaged second record\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 9, out.stderr
    adopter = Spool(tmp_path, max_bytes=1 << 30)
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == [bodies[2]]
    logged = out.stderr + caplog.text
    assert "torn or corrupt" in logged and "with the 3 events" in logged, logged


def test_a_damaged_progress_file_replays_its_spool_file_from_the_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bodies = batch_bodies(2)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for body in bodies:
        spool.append(body)
    assert spool.peek() == bodies[0]
    spool.commit()
    spool.close()
    (progress,) = tmp_path.glob("*" + spool_progress.PROGRESS)
    progress.write_bytes(b"\xff" * 12)  # garbled
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == bodies  # sent again: the collector drops what it has
    assert "replay progress" in caplog.text and "from its start" in caplog.text


def test_a_damaged_progress_file_too_long_is_mended_by_the_next_progress(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A progress file longer than one offset was found damaged (its spool file replayed
    from the start, as it should), but rewritten in place it stayed too long: every
    later adopter found it damaged again, resent the file's acknowledged batches and
    counted its damaged regions again."""
    bodies = batch_bodies(3)
    damaged_spool(tmp_path, bodies, {1})
    (progress,) = [tmp_path / (path.name[:-len(SUFFIX)] + spool_progress.PROGRESS)
                   for path in spool_files(tmp_path)]
    progress.write_bytes(b"\xff" * 40)
    first = Spool(tmp_path, max_bytes=1 << 20)
    assert first.adopt_orphans() == 1
    assert first.peek() == bodies[0]
    first.commit()
    assert first.peek() == bodies[2]  # past the damaged second record, counted
    assert first.lost_events == 3
    first.close()  # this process exits before the third is acknowledged
    caplog.clear()
    second = Spool(tmp_path, max_bytes=1 << 20)
    assert second.adopt_orphans() == 1
    assert drain(second) == [bodies[2]]
    assert (second.corrupt_bytes, second.lost_events) == (0, 0)
    assert "replay progress" not in caplog.text


def test_a_progress_file_left_without_its_spool_file_is_removed(tmp_path: Path) -> None:
    """A process killed between removing a replayed spool file and its progress file."""
    left = tmp_path / ("00000000000000000001-99-aa" + spool_progress.PROGRESS)
    left.write_bytes(bytes(12))
    assert Spool(tmp_path, max_bytes=1 << 20).adopt_orphans() == 0
    assert not left.exists()


def test_a_spool_file_written_before_progress_files_existed_is_replayed(
        tmp_path: Path) -> None:
    """The record format is unchanged: a file from an older version (no progress file)
    is replayed whole."""
    bodies = batch_bodies(2)
    path = tmp_path / ("00000000000000000001-99-aa" + SUFFIX)
    path.write_bytes(b"".join(RECORD.pack(len(b), zlib.crc32(b)) + b for b in bodies))
    path.chmod(0o600)
    tmp_path.chmod(0o700)
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == bodies


# -- files shorter than their records, things planted at a progress path ----------------
def two_files(tmp_path: Path, counts: tuple[int, int]) -> tuple[list[bytes], list[Path]]:
    """Two spool files left by closed processes, of ``counts`` batches each (the first
    one older): their bodies, oldest first, and the files."""
    bodies = batch_bodies(sum(counts), events=5)
    for part in (bodies[:counts[0]], bodies[counts[0]:]):
        spool = Spool(tmp_path, max_bytes=1 << 20)
        for body in part:
            assert spool.append(body)
        spool.close()
    return bodies, spool_files(tmp_path)


#: Where a file is cut: in which of its records, how far into it (negative: from its end).
CUTS = {
    "in the file's first header": (0, 3),
    "in a later record's header": (1, 5),
    "at a header's end": (1, RECORD.size),
    "in a batch header line": (1, RECORD.size + 20),
    "after the batch header line": (1, -4),
}


@pytest.mark.parametrize("cut", list(CUTS))
def test_a_file_cut_short_while_read_is_counted_and_replay_goes_on_to_the_next_file(
        tmp_path: Path, cut: str, caplog: pytest.LogCaptureFixture) -> None:
    """A spool file shorter than its records say (cut by someone else once adopted, or a
    failed write kept by ``_keep_failed`` whose fstat failed too): fewer bytes than a
    record header where one should be raised struct.error from peek(), at every try,
    and the sink's replay was stuck on that file forever; nothing after it was ever
    delivered or counted. Now the missing tail is a damaged region like any other."""
    bodies, (first, _) = two_files(tmp_path, (3, 2))
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 2  # sizes known from here on
    size = first.stat().st_size
    records = records_of(first)
    which, into = CUTS[cut]
    start, length = records[which]
    os.truncate(first, start + (into if into >= 0 else length + into))
    readable = cut == "after the batch header line"  # the cut record's events are known
    assert drain(adopter) == bodies[:which] + bodies[3:]  # the second file is replayed
    assert adopter.corrupt_bytes == size - start
    assert adopter.lost_events == (5 if readable else 0)
    assert "torn or corrupt" in caplog.text
    assert spool_files(tmp_path) == [] and adopter.empty


def test_a_record_cut_short_after_it_was_read_is_committed(tmp_path: Path) -> None:
    """commit() read the record's header again to move past it: a file cut meanwhile
    raised struct.error there, the acknowledged batch was never committed, and replay
    was stuck on it (sent again at every try)."""
    bodies, (first, _) = two_files(tmp_path, (2, 1))
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 2
    assert adopter.peek() == bodies[0]
    size = first.stat().st_size
    os.truncate(first, 3)
    adopter.commit()  # acknowledged: it is not sent again
    assert drain(adopter) == [bodies[2]]
    assert adopter.corrupt_bytes == size - (RECORD.size + len(bodies[0]))


def test_a_failed_write_kept_whose_bytes_did_not_all_reach_the_file_does_not_stop_replay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write stopped after 3 bytes (EIO), the truncate failed and so did the fstat
    that would have said how much was written: ``_keep_failed`` took the whole record as
    kept, past the file's real end. Replayed by the same process, that record's header
    was 3 bytes: struct.error at every peek, and the batches spooled after it (in a new
    file) were never replayed. (Its size is known from the writes now: see
    test_a_torn_batch_kept_whose_size_could_not_be_known_is_counted_once.)"""
    bodies = batch_bodies(3)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.append(bodies[0])
    real_pwrite, calls = os.pwrite, []

    def three_bytes_then_eio(fd: int, data: bytes, offset: int) -> int:
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pwrite(fd, bytes(data)[:3], offset)

    monkeypatch.setattr(os, "pwrite", three_bytes_then_eio)
    monkeypatch.setattr(os, "ftruncate", failing(errno.EIO, [], "ftruncate"))
    monkeypatch.setattr(os, "fstat", failing(errno.EIO, [], "fstat"))
    # Counted dropped: its 3 bytes hold none of its header line (the writes say how
    # much of it reached the file, which the failed fstat could not).
    assert not spool.append(bodies[1])
    monkeypatch.undo()
    assert spool.append(bodies[2])  # into a new file: that one takes no more
    assert len(spool_files(tmp_path)) == 2
    assert drain(spool) == [bodies[0], bodies[2]]
    assert spool.corrupt_bytes == 3  # the bytes that stayed, counted
    assert spool_files(tmp_path) == []


def progress_path_of(path: Path) -> Path:
    return path.with_name(path.name[:-len(SUFFIX)] + spool_progress.PROGRESS)


def plant(progress: Path, planted: str) -> None:
    """Put ``planted`` (what the spool names it) at a progress file's path."""
    if planted == "directory":
        progress.mkdir()
    elif planted == "symbolic link":
        progress.symlink_to(progress.parent / "elsewhere")
    else:
        os.mkfifo(progress, 0o600)


def test_a_fifo_at_a_progress_path_does_not_block_adoption(tmp_path: Path) -> None:
    """The progress file was opened without O_NONBLOCK: a FIFO planted at its path
    blocked the sink's worker in open() for ever (nobody writes to it). Now it is
    refused as what it is, and its spool file replayed from its start."""
    bodies = batch_bodies(2)
    path = spool_file_of(tmp_path, bodies)
    plant(progress_path_of(path), "named pipe (FIFO)")
    code = ("import logging, sys\nlogging.basicConfig(stream=sys.stderr)\n"
            "from audit_middleware.shipper.spool import Spool\n"
            "s = Spool(sys.argv[1], max_bytes=1 << 20)\nassert s.adopt_orphans() == 1\n"
            "out = []\nwhile (body := s.peek()) is not None:\n"
            "    out.append(body.decode())\n    s.commit()\n"
            "print(len(out), out == sys.argv[2:])\n")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path),
                               *(b.decode() for b in bodies)],
                              check=False, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("adopting a spool file whose progress path is a FIFO never returned")
    assert done.stdout.split() == ["2", "True"], done.stderr
    assert "is a named pipe (FIFO)" in done.stderr and "remove it" in done.stderr
    assert "check the disk" not in done.stderr


@pytest.mark.parametrize("planted", ["symbolic link", "directory"])
def test_something_planted_at_a_progress_path_is_named_with_what_to_do(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, planted: str) -> None:
    """A symbolic link or a directory at ``<name>.spool-read`` (progress cannot be kept
    for that file) was logged as a read error ending "check the disk": the disk is
    fine, and nothing said to remove what is there."""
    bodies = batch_bodies(2)
    path = spool_file_of(tmp_path, bodies)
    progress = progress_path_of(path)
    plant(progress, planted)
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == bodies  # replayed from its start, nothing lost
    assert f"is a {planted}" in caplog.text and "remove it" in caplog.text
    assert str(progress) in caplog.text
    assert "check the disk" not in caplog.text


@pytest.mark.parametrize("planted", ["symbolic link", "directory", "named pipe (FIFO)"])
def test_something_planted_at_a_progress_path_while_replaying_is_named_too(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, planted: str) -> None:
    """Met at the first progress write of a file this process spooled itself: the
    write's error (ELOOP, EISDIR, ESPIPE) ended "check the disk" too."""
    bodies = batch_bodies(3)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for body in bodies:
        assert spool.append(body)
    (path,) = spool_files(tmp_path)
    progress = progress_path_of(path)
    plant(progress, planted)
    assert drain(spool) == bodies
    assert f"is a {planted}" in caplog.text and "remove it" in caplog.text
    assert str(progress) in caplog.text
    assert "check the disk" not in caplog.text


@pytest.mark.parametrize("cut", ["after its header", "in its header"])
def test_a_torn_batch_kept_whose_size_could_not_be_known_is_counted_once(
        tmp_path: Path, cut: str) -> None:
    """As above, and the fstat that says how much of it was written failed too:
    ``_keep_failed`` took the whole record as written, so one torn in its header line
    was counted spooled, and its reader could not count its events: 50 events lost,
    counted nowhere (neither dropped nor lost). What was written is known from the
    writes themselves."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    kept, written = append_torn(spool, cut, "fstat")
    replayed = drain(spool)  # by the same process, which knows the file's size
    assert len(replayed) == 1
    counted_by_caller = 0 if kept else 50
    assert counted_by_caller + spool.lost_events == 50
    assert spool.corrupt_bytes == written


def test_files_spooled_for_another_collector_are_left_for_a_sink_of_that_collector(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two apps started in one directory share the default spool: batches one spooled
    for its collector were replayed by the other into another collector's audit log."""
    first = Spool(tmp_path, max_bytes=1 << 20, destination="unix:///srv/a/collector.sock")
    assert first.append(b"for a")
    first.close()
    other = Spool(tmp_path, max_bytes=1 << 20, destination="tcp://audit.example:7100")
    with caplog.at_level("WARNING", logger="audit_middleware"):
        assert other.adopt_orphans() == 0
        assert other.adopt_orphans() == 0  # said once, not at every scan
    assert other.peek() is None
    said = [r.getMessage() for r in caplog.records if "another collector" in r.getMessage()]
    assert len(said) == 1 and "1 spool file(s)" in said[0], said
    assert "no app ships to its old url" in said[0] and ".spool-read" in said[0], said
    again = Spool(tmp_path, max_bytes=1 << 20, destination="unix:///srv/a/collector.sock")
    assert again.adopt_orphans() == 1 and drain(again) == [b"for a"]


def test_a_file_without_a_destination_is_adopted_by_any_spool(tmp_path: Path) -> None:
    """Files of an older version (no tag in their name) are replayed as before, and a
    file renamed without its tag (the way out the warning names, for a collector that
    has moved) is replayed by whichever sink finds it."""
    legacy = spool_file_of(tmp_path, [b"older"])
    tagged = Spool(tmp_path / "moved", max_bytes=1 << 20, destination="tcp://old:7100")
    assert tagged.append(b"for the old address")
    tagged.close()
    (moved,) = spool_files(tmp_path / "moved")
    assert "~" in moved.name
    moved.rename(tmp_path / moved.name.replace("~" + moved.name.split("~")[1], SUFFIX))
    anyone = Spool(tmp_path, max_bytes=1 << 20, destination="tcp://new:7100")
    assert anyone.adopt_orphans() == 2
    assert drain(anyone) == [b"older", b"for the old address"]
    assert not legacy.exists()


def test_files_for_another_collector_do_not_fill_this_spools_cap(tmp_path: Path) -> None:
    """The cap counted every batch file in the directory: another app's, spooled for its
    collector and never replayed here, filled it, and this sink dropped its own batches
    (its own spool empty) for as long as they stayed."""
    record = RECORD.size + 100
    legacy = spool_file_of(tmp_path, [b"u" * 100])  # untagged: replayed here, so counted
    other = Spool(tmp_path, max_bytes=1 << 20, destination="tcp://a.example:7100")
    assert other.append(b"a" * 100) and other.append(b"a" * 100)
    other.close()
    this = Spool(tmp_path, max_bytes=2 * record, destination="tcp://b.example:7100")
    assert this.append(b"b" * 100)
    assert this.used_bytes == 2 * record
    assert not this.append(b"b" * 100)  # its own cap: the untagged file and its batch
    assert drain(this) == [b"u" * 100, b"b" * 100]
    assert not legacy.exists()


#: A worker process of a pre-forked server, as far as its spool goes: scans the spool
#: directory at start (as ``CollectorSink`` does), then appends a batch for each line
#: read and answers whether the spool took it.
_WORKER = """
import sys
from audit_middleware.shipper.spool import Spool
spool = Spool(sys.argv[1], max_bytes=int(sys.argv[2]))
spool.adopt_orphans()
print("ready", flush=True)
for _ in sys.stdin:
    print(spool.append(b"w" * 100), flush=True)
"""


def test_workers_sharing_a_spool_directory_share_its_cap(tmp_path: Path) -> None:
    """Each worker counted the directory at start and then only its own appends: four
    workers each filled the cap for itself, four times it on disk, the disk the cap is
    there to protect filled before any of them dropped a batch."""
    record = RECORD.size + 100
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path),
                                 str(4 * record)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        assert all(w.stdout is not None and w.stdout.readline() == "ready\n" for w in workers)
        taken = []
        for worker in workers:  # one after the other: no race, the count is exact
            assert worker.stdin is not None and worker.stdout is not None
            for _ in range(4):
                worker.stdin.write("append\n")
                worker.stdin.flush()
                taken.append(worker.stdout.readline() == "True\n")
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    assert taken.count(True) == 4, taken
    assert sum(p.stat().st_size for p in spool_files(tmp_path)) == 4 * record


def test_a_clock_stepped_back_does_not_reorder_the_spool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are replayed in name order, and a name starts with the wall clock: stepped
    back an hour (NTP, a VM restored) between two files, the newer file was named first,
    and the process that adopted them replayed the newer batches before the older."""
    now = [1_800_000_000 * 10**9]
    monkeypatch.setattr(time, "time_ns", lambda: now[0])
    spool = Spool(tmp_path, max_bytes=1 << 20, file_bytes=10)  # one batch a file
    assert spool.append(b"first")
    now[0] -= 3600 * 10**9
    assert spool.append(b"second")
    spool.close()
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 2
    assert drain(adopter) == [b"first", b"second"]


def test_a_disk_that_keeps_refusing_batches_is_said_at_a_low_rate_and_its_recovery_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """On a full disk every batch the spool could not write was logged as an error: 20
    lines a second in an outage, into logs as likely as not on that same full disk."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.append(b"before")
    monkeypatch.setattr(os, "pwrite", failing(errno.ENOSPC, [], "pwrite"))
    with caplog.at_level("WARNING", logger="audit_middleware"):
        assert not any(spool.append(b"x" * 100) for _ in range(100))
        monkeypatch.undo()
        assert spool.append(b"after")
    said = [r.getMessage() for r in caplog.records]
    refused = [m for m in said if "could not write a batch" in m]
    assert len(refused) == 7, refused  # the 1st, 2nd, 4th, ... 64th
    assert "No space left on device" in refused[0] and "64 in a row" in refused[-1]
    assert any("100 batches it could not write" in m for m in said), said
    assert drain(spool) == [b"before", b"after"]


@pytest.mark.parametrize("other_link", [False, True])
def test_batches_are_not_spooled_into_a_file_removed_under_the_spool(
        tmp_path: Path, other_link: bool) -> None:
    """Its file removed while the process spooled (an operator emptying a spool grown
    large in an outage, a temporary-file cleaner), every later batch was appended to the
    deleted file, counted spooled, and lost when the process exited unreplayed.
    ``other_link``: removal was then told by the file's link count falling to 0, and a
    second link (a hard-link backup of the spool, ``cp -al``; an NFS client's
    ``.nfsXXXX`` name for a file removed while open) kept it at 1."""
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    assert spool.append(b"before")
    for path in spool_files(tmp_path / "spool"):
        if other_link:
            os.link(path, tmp_path / "backup")
        path.unlink()
    assert spool.append(b"after")
    spool.close()  # the process exits before the collector is back
    adopter = Spool(tmp_path / "spool", max_bytes=1 << 20)
    assert adopter.adopt_orphans() == 1
    assert drain(adopter) == [b"after"]


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


class CountedSearch:
    """``_RECORD_START`` that counts the bytes its searches start over (the regex's
    work: it tries a match at each of them)."""

    def __init__(self) -> None:
        self.bytes = 0

    def finditer(self, data: bytes, pos: int = 0) -> Iterable[re.Match[bytes]]:
        self.bytes += len(data) - pos
        return RECORD_START.finditer(data, pos)


def test_a_long_run_of_zeros_costs_no_search_at_each_byte_nor_its_size_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Zeros (what a power loss leaves where a file's size reached the disk before its
    data) hold no record start, yet the search tried one at each of their bytes, about
    30 MB a second outside the scan budget; and the region was read whole to count its
    events: 17 s of the sink's worker (new events waiting) and 539 MiB of memory for a
    512 MiB file."""
    path = spool_file_of(tmp_path, [b"kept"])
    with path.open("ab") as file:
        file.truncate(path.stat().st_size + (32 << 20))
    search, reads = CountedSearch(), CountedReads()
    monkeypatch.setattr(spool_format, "_RECORD_START", search)
    monkeypatch.setattr(os, "pread", reads)
    adopter = Spool(tmp_path, max_bytes=1 << 30)
    adopter.adopt_orphans()
    assert drain(adopter) == [b"kept"]
    assert adopter.corrupt_bytes == 32 << 20
    assert search.bytes < 64 * 1024, search.bytes
    assert reads.largest <= 4 << 20, reads.largest


def test_events_are_counted_in_a_damaged_region_read_a_slice_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read a slice at a time, a region counts the events of every header line in it,
    those across a slice's end included."""
    monkeypatch.setattr(spool_format, "_COUNT_SLICE", 100)
    bodies = batch_bodies(40, events=3)
    path = damaged_spool(tmp_path, bodies, set(range(40)))  # every record's crc fails
    size = path.stat().st_size
    adopter = Spool(tmp_path, max_bytes=1 << 30)
    adopter.adopt_orphans()
    assert drain(adopter) == []
    assert (adopter.lost_events, adopter.corrupt_bytes) == (120, size)


def orphans(directory: Path, count: int) -> list[bytes]:
    """``count`` spool files left by processes that died, one batch each; the batches."""
    bodies = [b"orphan %d" % i for i in range(count)]
    for body in bodies:
        spool = Spool(directory, max_bytes=1 << 30)
        assert spool.append(body)
        spool.close()
    return bodies


#: A process with 128 descriptors at most adopts a backlog of spool files, then opens a
#: socket and spools a batch of its own; then it replays everything, scanning as it goes.
_ADOPTER = """
import resource, socket, sys
from audit_middleware.shipper.spool import Spool
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
spool = Spool(sys.argv[1], max_bytes=1 << 30)
print("adopted", spool.adopt_orphans())
socket.socket().close()
assert spool.append(b"its own")
replayed = []
while not spool.empty or spool.adopt_orphans():
    replayed.append(spool.peek())
    spool.commit()
for body in replayed:
    print(body.decode())
"""


def test_a_backlog_of_spool_files_does_not_take_every_descriptor(tmp_path: Path) -> None:
    """Each orphan is held open once adopted: 1,500 of them (workers crash-looping
    through an outage, each leaving its file) took all the 1,024 descriptors an app had,
    its sockets failed (EMFILE) and so did its own spooling."""
    bodies = orphans(tmp_path, 160)
    done = subprocess.run([sys.executable, "-c", _ADOPTER, str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    adopted, *replayed = done.stdout.splitlines()
    assert adopted == f"adopted {spool_adoption.ADOPT_MAX}"
    # Every orphan, oldest first, the rest adopted as the spool emptied; its own batch
    # too (another source: where it falls among them does not matter).
    assert [line for line in replayed if line != "its own"] == [b.decode() for b in bodies]
    assert replayed.count("its own") == 1


def test_a_forked_child_says_its_first_refused_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The count of batches refused in a row (said at the 1st, 2nd, 4th, ...) was the
    parent's in a forked child: a child forked after 2 refusals did not say its first
    (the 3rd), and said a recovery from the parent's refusals it never had."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    monkeypatch.setattr(os, "pwrite", failing(errno.ENOSPC, [], "pwrite"))
    assert not spool.append(b"x") and not spool.append(b"y")
    spool.after_fork()  # what the child's at-fork hook does
    caplog.clear()
    with caplog.at_level("WARNING", logger="audit_middleware"):
        assert not spool.append(b"z")
        monkeypatch.undo()
        assert spool.append(b"ok")
    said = [r.getMessage() for r in caplog.records]
    assert [m for m in said if "could not write a batch" in m] != [], said
    assert any("after 1 batches it could not write" in m for m in said), said


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


#: A worker that adopts orphans (``ADOPT_MAX`` set by its third argument) and says how
#: many; on a line read, replays what it holds (each batch appended to the file that
#: stands for the collector) and says how many; then scans and replays until no spool
#: file is left in the directory.
_ORDERED_ADOPTER = """
import os, sys, time
from pathlib import Path
from audit_middleware.shipper import spool_adoption
from audit_middleware.shipper.spool import Spool
spool_adoption.ADOPT_MAX = int(sys.argv[3])
spool = Spool(sys.argv[1], max_bytes=1 << 30)
print("adopted", spool.adopt_orphans(), flush=True)
sys.stdin.readline()

def replay():
    n = 0
    while (body := spool.peek()) is not None:
        fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, body + b"\\n")
        os.close(fd)
        spool.commit()
        n += 1
    return n

print("replayed", replay(), flush=True)
while list(Path(sys.argv[1]).glob("*.spool")):
    if not spool.adopt_orphans():
        time.sleep(0.01)  # another process replays them: look again
    replay()
"""


def adopter(directory: Path, collector: Path, adopt_max: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _ORDERED_ADOPTER, str(directory),
                             str(collector), str(adopt_max)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def ask(worker: subprocess.Popen[str], say: str | None = None) -> str:
    assert worker.stdin is not None and worker.stdout is not None
    if say is not None:
        worker.stdin.write(say)
        worker.stdin.flush()
    return worker.stdout.readline().strip()


def test_two_adopters_replay_a_dead_processs_files_in_order(tmp_path: Path) -> None:
    """With more orphans than one scan adopts, a second worker's scan found the first
    ``ADOPT_MAX`` locked (adopted by the first worker) and adopted the next ones: both
    replayed at once, and the dead process's later batches reached the collector before
    its earlier ones. One adopter at a time now: the second adopts nothing meanwhile."""
    bodies = orphans(tmp_path / "spool", 12)
    collector = tmp_path / "collector"
    first = adopter(tmp_path / "spool", collector, 4)
    try:
        assert ask(first) == "adopted 4"
        second = adopter(tmp_path / "spool", collector, 4)
        try:
            ask(second)  # its scan, while the first holds the oldest 4
            ask(second, "go\n")  # it replays what it holds before the first does
            ask(first, "go\n")
            assert first.wait() == 0 and second.wait() == 0
        finally:
            second.kill()
            second.wait()
    finally:
        first.kill()
        first.wait()
    assert collector.read_bytes().splitlines() == bodies


def test_orphans_are_taken_over_from_an_adopter_that_died(tmp_path: Path) -> None:
    """The adoption lock goes with the process that held it: the next one adopts what it
    left, from where its progress files say."""
    bodies = orphans(tmp_path / "spool", 6)
    code = ("import os, sys\nfrom audit_middleware.shipper import spool, spool_adoption\n"
            "spool_adoption.ADOPT_MAX = 3\ns = spool.Spool(sys.argv[1], max_bytes=1 << 30)\n"
            "assert s.adopt_orphans() == 3\ns.peek()\ns.commit()\nos._exit(9)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "spool")], check=False)
    survivor = Spool(tmp_path / "spool", max_bytes=1 << 30)
    replayed = []
    while not survivor.empty or survivor.adopt_orphans():
        replayed += drain(survivor)
    assert replayed == bodies[1:]


class SteppingClock:
    """A clock that moves one step each time it is read: how long something took is
    counted in the clock reads made meanwhile, never in real time."""

    def __init__(self, step: float = 0.001) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def counting_listings(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The directory counts ``spool`` makes from now on (one entry each)."""
    counts: list[int] = []
    count_used = spool._count_used

    def counted() -> int:
        counts.append(1)
        return count_used()

    monkeypatch.setattr(spool, "_count_used", counted)
    return counts


def test_a_spool_of_many_files_is_not_counted_at_each_append(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared cap counted the whole directory at each append: 105 ms a batch at
    20,000 files, on the sink's thread during an outage, which spooled so slowly that
    the queue filled and dropped. It is counted again once the count is 100 times older
    than it took (here a step of the clock), or this process appended its share."""
    monkeypatch.setattr(spool_cap, "_clock", SteppingClock())
    spool = Spool(tmp_path, max_bytes=1 << 30)
    spool.adopt_orphans()
    for i in range(1000):  # other processes' files
        (tmp_path / f"{i:020d}-1-0000abcd{SUFFIX}").write_bytes(b"x" * 100)
    counts = counting_listings(spool, monkeypatch)
    for _ in range(200):
        assert spool.append(b"batch" * 20)
    assert 1 <= len(counts) <= 10, len(counts)
    assert spool.used_bytes == 1000 * 100 + 200 * (RECORD.size + 100)


def test_processes_pass_the_shared_cap_by_their_share_of_it_at_most(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the bounded count allows: a process that has not counted since another one
    filled the cap appends at most its share (``max_bytes // RECOUNT_SHARE``) before
    its count shows the cap reached; then it refuses, and goes on refusing on that count
    until the count is old; counted again then, it sees the room the others made."""
    clock = SteppingClock(step=0.0)  # frozen: only the share sends a process counting
    monkeypatch.setattr(spool_cap, "_clock", clock)
    cap = spool_cap.RECOUNT_SHARE * 1000
    slow, fast = Spool(tmp_path, max_bytes=cap), Spool(tmp_path, max_bytes=cap)
    assert slow.append(b"s" * 100)
    while fast.append(b"f" * 100):
        pass
    late = 0
    while slow.append(b"s" * 100):
        late += 1
    used = sum(p.stat().st_size for p in spool_files(tmp_path))
    assert 0 < late and cap < used <= cap + cap // spool_cap.RECOUNT_SHARE
    counts = counting_listings(slow, monkeypatch)
    assert not slow.append(b"s" * 100) and counts == []  # full, as just counted
    drain(fast)  # the other process replays its batches
    clock.step = 1.0  # the count grows old
    assert slow.append(b"s" * 100) and counts == [1]


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


def test_a_file_removed_under_the_spool_is_closed_once_replayed(tmp_path: Path) -> None:
    """A spool file removed by something else (an operator emptying the spool) is still
    replayed from its descriptor; its unlink then finds nothing. Setting unreadable files
    aside moved the close into the unlink's success branch: such a file's descriptor
    (and its lock) stayed open for the life of the process, one per file."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert spool.append(b"one")
    [path] = spool_files(tmp_path)
    fd = spool._files[0].fd
    path.unlink()
    assert drain(spool) == [b"one"]
    with pytest.raises(OSError) as closed:
        os.fstat(fd)
    assert closed.value.errno == errno.EBADF


def test_a_child_forked_without_the_hook_does_not_keep_the_adoption_lock(
        tmp_path: Path) -> None:
    """Under a server that forks without the at-fork hook (uWSGI), a child holds a copy
    of its parent's adoption lock descriptor until its first event: an ``flock`` is the
    open file's, so the parent's close released nothing while an idle child kept its
    copy, and no process adopted an orphan again (not even the parent). The parent lets
    go of the lock itself now; the child only closes its copy."""
    orphans(tmp_path, 2)
    parent = Spool(tmp_path, max_bytes=1 << 30)
    assert parent.adopt_orphans() == 2
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: idle (no event yet, so no after_fork) until told to exit
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    try:
        assert drain(parent) == [b"orphan 0", b"orphan 1"]  # the lock is let go here
        lock = os.open(tmp_path / spool_adoption.ADOPTING, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free for another adopter
        finally:
            os.close(lock)
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)


def test_a_forked_childs_hook_leaves_its_parent_the_adoption_lock(tmp_path: Path) -> None:
    """The parent unlocks the adoption lock when it lets go of it; a child's at-fork
    hook must only close its copy: unlocked there, the lock (the open file's, shared
    with the parent) was released under a parent still replaying, and a second adopter
    replayed the dead process's later batches beside its earlier ones."""
    orphans(tmp_path, 2)
    parent = Spool(tmp_path, max_bytes=1 << 30)
    assert parent.adopt_orphans() == 2
    pid = os.fork()
    if pid == 0:
        parent.after_fork()  # what the child's at-fork hook does
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    lock = os.open(tmp_path / spool_adoption.ADOPTING, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):  # still the parent's
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(lock)
    assert drain(parent) == [b"orphan 0", b"orphan 1"]


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
