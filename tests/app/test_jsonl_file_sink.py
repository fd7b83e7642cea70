"""JsonlFileSink under stress: processes sharing the file, failing writes, torn lines,
paths that are no file, rotation."""

from __future__ import annotations

import ctypes
import enum
import errno
import fcntl
import logging
import os
import select
import shutil
import stat
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_middleware import AuditConfigurationError, JsonlFileSink, configure, emit
from audit_middleware.event import json_line
from audit_middleware.testing import reset_configuration
from tests.e2e.harness import run_python

GUARD = 30.0  # seconds: only so that a broken build fails instead of hanging the suite


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    reset_configuration()


def targets(path: Path) -> list[str]:
    """Each line's target; every line must be valid JSON."""
    valid, bad = lines_and_fragments(path)
    assert not bad, bad
    return valid


def libc_fork() -> int:
    """A fork that runs no at-fork hook, as uWSGI forks its workers (``PyDLL``: the GIL
    stays held across the call)."""
    return int(ctypes.PyDLL(None).fork())


def in_child(work: Callable[[], None], fork: Callable[[], int] = os.fork) -> int:
    """Fork; the child runs ``work`` and exits 0 if it returned, 1 if it raised."""
    pid = fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        except BaseException:  # noqa: BLE001 - reported on stderr, and by the exit code
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def read_byte(fd: int) -> bytes:
    if not select.select([fd], [], [], GUARD)[0]:
        raise AssertionError("the other process never answered")
    return os.read(fd, 1)


def failing_writes(monkeypatch: pytest.MonkeyPatch, times: int, *, partial: int = 0) -> None:
    """The next ``times`` writes of more than a byte fail with ENOSPC. With ``partial``,
    as the kernel fills a disk: each first writes that many bytes and says so (a short
    write), and the write of the rest fails."""
    real_write = os.write
    left, short = [times], [False]

    def write(fd: int, data: Any) -> int:
        if left[0] > 0 and len(data) > 1:
            if partial and not short[0]:
                short[0] = True
                return real_write(fd, bytes(data[:partial]))
            left[0] -= 1
            short[0] = False
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


def file_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of the file each write to a regular file finds, as a reader following
    the file would see it between writes; call after the writes are patched."""
    sizes: list[int] = []
    inner = os.write

    def write(fd: int, data: Any) -> int:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            sizes.append(st.st_size)
        return inner(fd, data)

    monkeypatch.setattr(os, "write", write)
    return sizes


def lines_and_fragments(path: Path) -> tuple[list[str], list[bytes]]:
    """The targets of the file's valid lines, and the lines that are not valid JSON."""
    valid: list[str] = []
    bad: list[bytes] = []
    for line in path.read_bytes().splitlines():
        try:
            valid.append(orjson.loads(line)["target"])
        except orjson.JSONDecodeError:
            bad.append(line)
    return valid, bad


def before_the_retry(action: Callable[[], object]) -> Callable[[int, int], None]:
    """An ``fcntl.flock`` that runs ``action`` before the second exclusive lock of the
    file: the retry of a batch whose first attempt failed."""
    real_flock, locks = fcntl.flock, [0]

    def flock(fd: int, op: int) -> None:
        if op == fcntl.LOCK_EX:
            locks[0] += 1
            if locks[0] == 2:
                action()
        real_flock(fd, op)

    return flock


def a_batch_cut_in_its_second_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events "first" and "second" queued, for one batch whose write stops 10 bytes
    into the second line (a short write), and whose write of the rest fails (ENOSPC)."""
    first = emit("team_created", "first")
    emit("team_created", "second")
    failing_writes(monkeypatch, 1, partial=len(json_line(first)) + 10)


def append_as_another_writer(path: Path, line: bytes) -> None:
    """What another process's sink appends: a newline first if the file's last line is
    not ended."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, b"\n" * torn + line)
    finally:
        os.close(fd)


#: Each run in a fresh interpreter: a fork without the hooks, in pytest's process, could
#: copy a lock that another test's thread held (logging's) into a child that then hung.
_TWO_WORKERS = """
import sys
from tests.app.test_jsonl_file_sink import two_workers_append
two_workers_append(sys.argv[1], sys.argv[2])
"""


@pytest.mark.parametrize("fork", ["os.fork", "without-hooks"])
def test_processes_appending_to_one_file_never_cut_each_others_lines(
        tmp_path: Path, fork: str) -> None:
    """Worker A's write fails halfway, and worker B appends before A's retry: B's lines
    start on a line of their own, A's retry writes its cut line again whole after them
    (the fragment stays, one bad line), and nothing is cut away. Both inherited the
    parent's descriptor (a pre-forking server), so a flock on it would not exclude them
    either."""
    path = tmp_path / "e.jsonl"
    done = run_python(_TWO_WORKERS, str(path), fork)
    valid, bad = lines_and_fragments(path)
    assert sorted(valid) == sorted(
        ["parent"] + [f"{w}-{i}" for w in "ab" for i in range(20)]), done.stderr
    assert bad == [b'{"v":1,"id'], done.stderr  # A's first 10 bytes, on their own
    assert (done.returncode, done.stdout.strip()) == (0, "[0, 0]"), done.stderr


def two_workers_append(path: str, fork: str) -> None:
    """A server's master makes the sink and writes (the workers inherit the open file),
    then forks workers A and B (``os.fork``, or as uWSGI does, without the at-fork
    hooks); A's write fails halfway, B appends before A's retry. Prints the workers'
    exit codes."""
    if fork == "without-hooks":  # uWSGI without py-call-osafterfork
        sys.modules["uwsgi"] = types.SimpleNamespace(opt={})
    sink = JsonlFileSink(path, fsync=False)
    configure(sink=sink)
    emit("team_created", "parent")
    assert sink.flush(5)
    go_r, go_w = os.pipe()  # A to B: half of my batch is written
    done_r, done_w = os.pipe()  # B to A: I wrote, or I wait for your lock

    def worker_a() -> None:
        real_write, calls = os.write, [0]

        def write(fd: int, data: Any) -> int:
            if calls[0] == 2 or len(data) < 2:
                return real_write(fd, data)
            calls[0] += 1
            if calls[0] == 1:  # a short write, as on a disk filling up
                return real_write(fd, bytes(data[:10]))
            real_write(go_w, b"g")
            read_byte(done_r)  # B waits for the lock
            raise OSError(errno.ENOSPC, "No space left on device")

        os.write = write  # type: ignore[assignment]  # this child's only
        fcntl.flock = before_the_retry(lambda: read_byte(done_r))  # B has appended
        for i in range(20):
            emit("team_created", f"a-{i}")
        assert sink.flush(GUARD)
        assert sink.stats()["failed"] == 0

    def worker_b() -> None:
        read_byte(go_r)
        real_flock = fcntl.flock

        def flock(fd: int, op: int) -> None:
            if op == fcntl.LOCK_EX:
                try:
                    return real_flock(fd, op | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.write(done_w, b"l")  # excluded while A's batch is under way
            return real_flock(fd, op)

        fcntl.flock = flock  # type: ignore[assignment]  # this child's only
        for i in range(20):
            emit("team_created", f"b-{i}")
        assert sink.flush(GUARD)
        os.write(done_w, b"w")

    do_fork = libc_fork if fork == "without-hooks" else os.fork
    pids = [in_child(worker_b, do_fork), in_child(worker_a, do_fork)]
    print([exit_code(pid) for pid in pids])
    sink.close(5)


def test_a_failing_write_is_retried_until_the_disk_frees_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "e.jsonl"
    sink = JsonlFileSink(path, fsync=False, max_delay=GUARD)  # one batch: woken by flush
    configure(sink=sink)
    failing_writes(monkeypatch, 3, partial=7)
    ids = [emit("team_created", f"t{i}").target for i in range(5)]
    assert sink.flush(GUARD)
    assert targets(path) == ids
    assert sink.stats() == {"submitted": 5, "queued": 0, "failed": 0, "dropped": 0,
                            "delivered": 5}
    logged = [r.getMessage() for r in caplog.records]
    assert sum("cannot write" in m for m in logged) == 2  # at the 1st and 2nd failure
    assert sum("writing again after 3 failures" in m for m in logged) == 1


def test_a_batch_being_retried_counts_as_queued(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = JsonlFileSink(tmp_path / "e.jsonl", fsync=False)
    configure(sink=sink)
    retrying, disk_freed = threading.Event(), threading.Event()
    real_write = os.write
    calls = [0]

    def write(fd: int, data: Any) -> int:
        if not disk_freed.is_set():
            calls[0] += 1
            if calls[0] == 2:  # the retry: the first failure was counted
                retrying.set()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    emit("team_created", "t1")
    sink._queue.wake()
    assert retrying.wait(GUARD)
    assert sink.stats() == {"submitted": 1, "queued": 1, "failed": 0, "dropped": 0,
                            "delivered": 0}
    disk_freed.set()
    assert sink.flush(GUARD)
    assert sink.stats()["delivered"] == 1


def test_close_gives_up_a_batch_that_still_fails_and_counts_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    sink = JsonlFileSink(tmp_path / "e.jsonl", fsync=False, max_delay=GUARD)  # one batch
    configure(sink=sink)
    failing_writes(monkeypatch, 1_000_000)
    for i in range(3):
        emit("team_created", f"t{i}")
    sink.close(timeout=GUARD)
    counts = sink.stats()
    assert (counts["failed"], counts["queued"], counts["delivered"]) == (3, 0, 0)
    assert "3 events lost at close" in caplog.text


def test_a_file_left_without_a_final_newline_gets_one_before_the_first_batch(
        tmp_path: Path) -> None:
    """A writer killed mid-line (a crash, a power loss) left a torn last line."""
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"target":"whole"}\n{"v":1,"ta')
    sink = JsonlFileSink(path, fsync=False)
    configure(sink=sink)
    emit("team_created", "new")
    assert sink.flush(5)
    assert path.read_bytes().splitlines()[1] == b'{"v":1,"ta'
    assert orjson.loads(path.read_bytes().splitlines()[2])["target"] == "new"


def test_a_file_moved_away_is_followed_by_a_new_one_at_the_path(tmp_path: Path) -> None:
    """logrotate's default (rename, then create): the sink kept appending to the renamed
    file, and then to a deleted one."""
    path = tmp_path / "e.jsonl"
    sink = JsonlFileSink(path, fsync=False)
    configure(sink=sink)
    emit("team_created", "before")
    assert sink.flush(5)
    path.rename(tmp_path / "e.jsonl.1")
    emit("team_created", "after")
    assert sink.flush(5)
    assert targets(tmp_path / "e.jsonl.1") == ["before"]
    assert targets(path) == ["after"]


def test_a_directory_path_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(AuditConfigurationError, match="is a directory; give the path of a file"):
        JsonlFileSink(tmp_path)
    (tmp_path / "data").touch()
    with pytest.raises(AuditConfigurationError, match="a parent of .* is a file"):
        JsonlFileSink(tmp_path / "data" / "events.jsonl")


@pytest.mark.parametrize(("options", "message"), [
    # Each was accepted, then: a bare TypeError from pathlib (None, bytes), the worker
    # spinning (max_delay NaN) or never waking (inf), an fsync 'no' turned on, or a
    # ValueError that named none of the three options it might be about.
    ({"path": None}, "path must be a file's path"),
    ({"path": b"events.jsonl"}, "path must be a file's path"),
    ({"fsync": "no"}, "fsync must be True or False"),
    ({"max_queue": 0}, "max_queue must be a positive int"),
    ({"max_batch": True}, "max_batch must be a positive int"),
    ({"max_delay": float("nan")}, "max_delay must be a number of seconds"),
    ({"max_delay": float("inf")}, "max_delay must be a number of seconds"),
    ({"max_delay": "0.2"}, "max_delay must be a number of seconds"),
])
def test_bad_options_are_refused_at_construction(tmp_path: Path, options: dict[str, Any],
                                                 message: str) -> None:
    with pytest.raises(AuditConfigurationError, match=message):
        JsonlFileSink(**{"path": tmp_path / "e.jsonl", **options})


def test_numbers_of_an_int_or_float_subclass_are_taken(tmp_path: Path) -> None:
    """A float subclass (``numpy.float64``, from a config computed with numpy) or an int
    one (an ``enum.IntEnum`` member) is a number of seconds or a size: taken before
    the construction-time checks, then refused as "not a number of seconds"."""

    class Seconds(float):
        pass

    class Limit(enum.IntEnum):
        QUEUE = 100
        BATCH = 10

    sink = JsonlFileSink(tmp_path / "e.jsonl", max_delay=Seconds(0.2),
                         max_queue=Limit.QUEUE, max_batch=Limit.BATCH)
    sink.close(5)


def test_a_fifo_is_refused_at_construction(tmp_path: Path) -> None:
    """Opened for writing, a FIFO with no reader hung the worker for good."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "fifo")
    for name in ("fifo", "link"):
        with pytest.raises(AuditConfigurationError, match="is not a regular file"):
            JsonlFileSink(tmp_path / name)


def test_a_fifo_made_after_construction_is_reported_not_waited_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "e.jsonl"
    sink = JsonlFileSink(path, fsync=False)
    configure(sink=sink)
    os.mkfifo(path)
    emit("team_created", "t1")
    sink.close(timeout=GUARD)
    assert sink.stats()["failed"] == 1
    assert "is not a regular file" in caplog.text


def test_a_symlink_to_a_file_is_followed(tmp_path: Path) -> None:
    real = tmp_path / "real.jsonl"
    real.touch()
    (tmp_path / "link.jsonl").symlink_to(real)
    sink = JsonlFileSink(tmp_path / "link.jsonl", fsync=False)
    configure(sink=sink)
    emit("team_created", "t1")
    assert sink.flush(5)
    assert targets(real) == ["t1"]


def test_unwritable_file_is_logged_without_a_traceback_per_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "audit_middleware")
    real_open = os.open

    def denied(path: Any, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith("e.jsonl"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", denied)
    sink = JsonlFileSink(tmp_path / "e.jsonl", fsync=False)
    configure(sink=sink)
    emit("team_created", "t1")
    sink.close(timeout=GUARD)
    assert sink.stats()["failed"] == 1
    assert "Permission denied" in caplog.text
    assert all(r.exc_info is None for r in caplog.records)


def test_a_file_system_without_flock_is_written_to_unlocked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An NFS mount without its lock manager answers ENOLCK: never writing would lose
    every event."""
    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    path = tmp_path / "e.jsonl"
    sink = JsonlFileSink(path, fsync=False)
    configure(sink=sink)
    emit("team_created", "t1")
    assert sink.flush(5)
    emit("team_created", "t2")
    assert sink.flush(5)
    assert targets(path) == ["t1", "t2"]
    assert caplog.text.count("has no flock") == 1


def test_a_worker_outliving_close_never_writes_to_a_reused_descriptor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() closed the file while its worker, past close's timeout, was still
    writing: the next file opened got the same number, and the audit lines."""
    path = tmp_path / "e.jsonl"
    sink = JsonlFileSink(path, fsync=False, max_batch=1)
    configure(sink=sink)
    in_write, release = threading.Event(), threading.Event()
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if not release.is_set():
            in_write.set()
            release.wait(GUARD)  # a hung disk
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    emit("team_created", "first")
    assert in_write.wait(GUARD)
    emit("team_created", "second")
    worker = sink._queue._worker
    assert worker is not None
    sink.close(timeout=0.1)  # gives up on the worker, still in its write
    other = tmp_path / "other"
    fd = os.open(other, os.O_WRONLY | os.O_CREAT)  # the lowest free number
    try:
        release.set()
        worker.join(GUARD)
    finally:
        os.close(fd)
    assert other.read_bytes() == b""
    assert targets(path) == ["first"]
    assert sink.stats()["failed"] == 1


class HeldLock:
    """The descriptor lock of a worker hung in its write (a hung disk): never acquired;
    records how long each acquire would have waited."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.waits.append(timeout)
        return False


def test_close_waits_for_a_hung_worker_no_longer_than_its_timeout_in_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """close(timeout) waited the timeout for the worker to finish, then the timeout
    again for the descriptor: twice what the caller (the exit hook's 5 s) allowed."""
    sink = JsonlFileSink(tmp_path / "e.jsonl", fsync=False)
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])

    def queue_close_times_out(timeout: float | None) -> None:
        clock[0] += timeout or 0  # the worker, still in its write, was waited for

    monkeypatch.setattr(sink._queue, "close", queue_close_times_out)
    held = HeldLock()
    sink._fd_lock = held  # type: ignore[assignment]
    sink.close(timeout=5)
    assert held.waits == [0]


@pytest.mark.parametrize("first", ["flush", "stats", "close", "the queue's exit hook"])
def test_a_child_forked_without_hooks_closes_without_its_parents_locks(
        tmp_path: Path, first: str) -> None:
    """uWSGI forks without the at-fork hooks: a worker kept the sink as its master left
    it, the descriptor lock held if the master's worker thread was writing then (a thread
    the child lacks). The child's close() waited on that lock for its whole timeout
    (forever without one), and its stats() counted the master's retried batch. Whichever
    of flush(), stats(), close() and the queue's own atexit close() (it runs before an
    exit hook registered ahead of the sink) the child reaches first resets the sink: the
    queue's had reset the queue alone, and the sink then never found the fork."""
    sink = JsonlFileSink(tmp_path / "e.jsonl", fsync=False)
    assert sink._fd_lock.acquire()  # the master's worker, in a write at the fork
    sink._retrying = 3  # a batch the master was retrying
    sink._queue._pid = -1  # this process is now that child
    if first == "flush":
        assert sink.flush(GUARD)
    elif first == "stats":
        assert sink.stats()["queued"] == 0
    elif first == "the queue's exit hook":
        sink._queue.close(GUARD)  # what its atexit hook calls
    closer = threading.Thread(target=sink.close, daemon=True)
    closer.start()
    closer.join(GUARD)
    assert not closer.is_alive()
    assert sink.stats()["queued"] == 0


def test_a_batch_left_at_close_gets_one_attempt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As documented: once close() has begun, each batch left is tried once more. One
    that began after it was tried twice, back to back, doubling close's time on a slow
    failing disk."""
    sink = JsonlFileSink(tmp_path / "e.jsonl", fsync=False, max_delay=GUARD)  # woken by close
    configure(sink=sink)
    attempts = [0]

    def enospc(fd: int, data: Any) -> int:
        attempts[0] += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", enospc)
    emit("team_created", "t1")
    sink.close(timeout=GUARD)
    assert (attempts[0], sink.stats()["failed"]) == (1, 1)


def test_a_failed_write_never_shrinks_the_file_and_its_retry_resumes_where_it_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that failed after the batch's first line and part of its second was
    truncated back to where the batch began: the file shrank, and a shipper following it
    (Filebeat, Vector, ``tail -F``) took it for a truncated file and read it again from
    offset 0, or lost its place. Now the retry writes the rest after what is there."""
    path = tmp_path / "e.jsonl"
    sink = JsonlFileSink(path, fsync=False, max_delay=GUARD)  # one batch: woken by flush
    configure(sink=sink)
    emit("team_created", "before")
    assert sink.flush(GUARD)
    a_batch_cut_in_its_second_line(monkeypatch)
    sizes = file_sizes(monkeypatch)
    assert sink.flush(GUARD)
    sizes.append(path.stat().st_size)
    assert sizes == sorted(sizes)
    assert lines_and_fragments(path) == (["before", "first", "second"], [])
    assert sink.stats() == {"submitted": 3, "queued": 0, "failed": 0, "dropped": 0,
                            "delivered": 3}


def test_a_retry_after_another_writer_appended_writes_its_cut_line_again_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process appended between the failed write and its retry (the lock is not
    held while waiting): its newline ended the cut line, which stays as one bad line;
    the retry writes that event again whole, and not the line already written."""
    path = tmp_path / "e.jsonl"
    sink = JsonlFileSink(path, fsync=False, max_delay=GUARD)  # one batch: woken by flush
    configure(sink=sink)
    a_batch_cut_in_its_second_line(monkeypatch)
    sizes = file_sizes(monkeypatch)
    monkeypatch.setattr(fcntl, "flock", before_the_retry(
        lambda: append_as_another_writer(path, b'{"target":"other"}\n')))
    assert sink.flush(GUARD)
    sizes.append(path.stat().st_size)
    assert sizes == sorted(sizes)
    assert lines_and_fragments(path) == (["first", "other", "second"], [b'{"v":1,"id'])
    assert sink.stats()["delivered"] == 2


def copytruncate(path: Path) -> Path:
    """What logrotate's ``copytruncate`` does: copy the file, then truncate it to 0."""
    rotated = path.with_name(path.name + ".1")
    shutil.copyfile(path, rotated)
    os.truncate(path, 0)
    return rotated


def test_after_copytruncate_the_file_holds_only_new_lines_from_offset_zero(
        tmp_path: Path) -> None:
    """The sink appends with O_APPEND, so its next line lands at offset 0 of the emptied
    file (no hole of NUL bytes up to its old offset), and with no newline before it: a
    size that is not where its last batch ended is not taken for a torn line's."""
    path = tmp_path / "e.jsonl"
    sink = JsonlFileSink(path, fsync=False)
    configure(sink=sink)
    for i in range(3):
        emit("team_created", f"old-{i}")
    assert sink.flush(GUARD)
    rotated = copytruncate(path)
    for i in range(2):
        emit("team_created", f"new-{i}")
    assert sink.flush(GUARD)
    data = path.read_bytes()
    assert data.startswith(b'{"v":1,') and b"\0" not in data
    assert targets(path) == ["new-0", "new-1"]
    assert targets(rotated) == ["old-0", "old-1", "old-2"]


def test_a_copytruncate_between_a_failed_write_and_its_retry_loses_no_event(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rotated copy got the batch's first line and part of its second; the retry
    writes the second whole at offset 0 of the emptied file."""
    path = tmp_path / "e.jsonl"
    sink = JsonlFileSink(path, fsync=False, max_delay=GUARD)  # one batch: woken by flush
    configure(sink=sink)
    a_batch_cut_in_its_second_line(monkeypatch)
    rotated: list[Path] = []
    monkeypatch.setattr(fcntl, "flock", before_the_retry(
        lambda: rotated.append(copytruncate(path))))
    assert sink.flush(GUARD)
    assert targets(path) == ["second"]
    assert lines_and_fragments(rotated[0]) == (["first"], [b'{"v":1,"id'])


@pytest.mark.parametrize("another_writer", [False, True])
def test_a_write_cut_exactly_at_a_line_end_resumes_with_the_next_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, another_writer: bool) -> None:
    """The short write ends exactly after the batch's first line: the retry neither
    writes that line again (as the start of the line it stopped in) nor leaves a
    fragment, whether or not another process appended in between."""
    path = tmp_path / "e.jsonl"
    sink = JsonlFileSink(path, fsync=False, max_delay=GUARD)  # one batch: woken by flush
    configure(sink=sink)
    first = emit("team_created", "first")
    emit("team_created", "second")
    failing_writes(monkeypatch, 1, partial=len(json_line(first)))
    if another_writer:
        monkeypatch.setattr(fcntl, "flock", before_the_retry(
            lambda: append_as_another_writer(path, b'{"target":"other"}\n')))
    assert sink.flush(GUARD)
    expected = ["first", "other", "second"] if another_writer else ["first", "second"]
    assert targets(path) == expected
    assert sink.stats()["delivered"] == 2
