"""Appends the disk refuses (``Spool.append``'s error paths): a failed fsync, a write cut
short, a truncate that fails too; each batch is counted dropped exactly when it is not
delivered, and the refusals are said at a low rate."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from audit_middleware.shipper import spool_append
from audit_middleware.shipper.spool import Spool
from audit_middleware.shipper.spool_format import RECORD
from tests.e2e.harness import run_python
from tests.shipper.spool_helpers import FcntlWithoutFlock, batch_bodies, drain, spool_files


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


#: A process spooling under a file size limit (``RLIMIT_FSIZE``), of 20 batches of 10 KiB.
_UNDER_A_FILE_SIZE_LIMIT = """
import resource, sys
from audit_middleware.shipper import spool as spool_module
from audit_middleware.shipper.spool import Spool
from tests.shipper.spool_helpers import batch_bodies
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
spool = Spool(sys.argv[1], max_bytes=1 << 20)
body = batch_bodies(1, events=1000)[0][:10240]
print([spool.append(body) for _ in range(20)])
"""


def test_a_file_size_limit_starts_a_new_file_rather_than_dropping_every_later_batch(
        tmp_path: Path) -> None:
    """Under a file size limit (``ulimit -f``, systemd's ``LimitFSIZE=``) below
    ``file_bytes``, the first spool file stopped at the limit (EFBIG) and stayed the one
    appended to: every later batch was dropped (counted) while the spool had room for
    them all. A real limit, in a process of its own (EFBIG: Python ignores SIGXFSZ)."""
    limit = 64 * 1024
    done = run_python(_UNDER_A_FILE_SIZE_LIMIT, str(tmp_path), str(limit))
    assert done.stdout.strip() == str([True] * 20), done.stderr
    assert done.stderr.count("file size limit") == 1, done.stderr  # said once
    files = spool_files(tmp_path)
    assert len(files) > 1 and all(f.stat().st_size <= limit for f in files)
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    adopter.adopt_orphans()
    assert len(drain(adopter)) == 20
    assert adopter.corrupt_bytes == 0


#: A process spooling under a file size limit of 64 KiB: a batch of 2 KiB, one of 63 KiB
#: (which does not fit beside it), then 40 of 1 KiB; then the limit raised (``setrlimit``:
#: a soft limit may be raised up to the hard one) and 4 of 64 KiB. Prints the number of
#: the spool's files after each part.
_BATCHES_OF_MANY_SIZES = """
import resource, sys
from pathlib import Path
from audit_middleware.shipper import spool as spool_module
from audit_middleware.shipper.spool import Spool
from tests.shipper.spool_helpers import spool_files
body = b"x" * (64 * 1024)  # what a batch holds does not matter to its file
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
spool = Spool(sys.argv[1], max_bytes=1 << 20)
assert spool.append(body[:2048]) and spool.append(body[:63 * 1024])
assert all(spool.append(body[:1024]) for _ in range(40))
print(len(spool_files(Path(sys.argv[1]))))
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
assert all(spool.append(body[:64 * 1024]) for _ in range(4))
print(len(spool_files(Path(sys.argv[1]))))
"""


def test_a_file_size_limit_sizes_later_files_by_the_limit_not_by_the_file_that_met_it(
        tmp_path: Path) -> None:
    """Later files were started at the size of the file the limit stopped, not at the
    limit: a batch too large for the room left in a file of 2 KiB made every later file
    one of 2 KiB (here a file for each 1 KiB batch, 42 files; at a real cap of 256 MiB,
    thousands, each an open descriptor), and the limit raised the files stayed that
    small. The limit is read as it is now (``RLIMIT_FSIZE``)."""
    done = run_python(_BATCHES_OF_MANY_SIZES, str(tmp_path))
    assert done.returncode == 0, done.stderr
    limited, raised = map(int, done.stdout.split())
    assert limited <= 3, done.stdout  # 2 KiB; 63 KiB; 40 KiB: under 64 KiB each
    assert raised == limited, done.stdout  # 256 KiB more: in the last file, as 8 MiB allow
    adopter = Spool(tmp_path, max_bytes=1 << 20)
    adopter.adopt_orphans()
    assert len(drain(adopter)) == 46 and adopter.corrupt_bytes == 0


def test_a_file_that_meets_a_size_limit_no_rlimit_says_takes_no_more_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EFBIG from a limit ``RLIMIT_FSIZE`` does not say (a file system's largest file, a
    limit lowered from outside by ``prlimit`` since it was read): the batch goes to a
    new file, not dropped, and so do the later ones."""
    real_pwrite = os.pwrite

    def limited(fd: int, data: bytes, offset: int) -> int:
        if offset + len(data) > 4096:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", limited)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    bodies = [body[:1000] for body in batch_bodies(10, events=100)]
    assert [spool.append(body) for body in bodies] == [True] * 10
    assert len(spool_files(tmp_path)) == 3  # four records of 1,008 bytes a file
    assert drain(spool) == bodies


def test_a_first_batch_larger_than_the_file_size_limit_says_the_limit_and_what_to_do(
        tmp_path: Path) -> None:
    """Under a file size limit smaller than the process's very first batch, the batch
    was dropped before the once-only warning about the limit was said (that is said only
    when a file already holding batches is sized): the log said only "could not write a
    batch ([Errno 27] File too large)", not why nor what to do."""
    done = run_python(_UNDER_A_FILE_SIZE_LIMIT, str(tmp_path), "4096")
    assert done.stdout.strip() == str([False] * 20), done.stderr
    said = [line for line in done.stderr.splitlines() if "could not write a batch" in line]
    assert len(said) == 5, done.stderr  # the 1st, 2nd, 4th, 8th and 16th in a row
    first = said[0]
    assert "RLIMIT_FSIZE" in first and "4096 bytes" in first, first
    assert "raise the limit" in first and "batch_size" in first, first


@pytest.mark.parametrize("error", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_file_system_without_flock_says_so_at_the_first_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        error: int) -> None:
    """A file system without ``flock`` (an NFS mount without its lock manager: ENOLCK;
    some FUSE or SMB mounts: EOPNOTSUPP) refuses the lock each new spool file is held
    by: every batch was dropped, and the log said only "could not write a batch
    ([Errno 37] No locks available)", not what it means nor what to do."""
    monkeypatch.setattr(spool_append, "fcntl", FcntlWithoutFlock(error))
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert not spool.append(b"batch")
    assert spool_files(tmp_path) == [] and list(tmp_path.iterdir()) == []  # nothing left
    (first,) = [r.getMessage() for r in caplog.records
                if "could not write a batch" in r.getMessage()]
    assert "flock" in first and "local file system" in first, first
    assert "spool_dir" in first, first
