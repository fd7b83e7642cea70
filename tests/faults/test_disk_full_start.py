"""A collector (re)started on a disk full to the last byte: its data directory on a small
tmpfs (``full_disk``'s helpers), filled while the collector is stopped.

Opening the store writes (the index's ``-shm`` and WAL, the start checkpoint, maybe a
segment header): on a full disk it failed, and the collector exited ("disk I/O error":
SQLite could not make the index's ``-shm``), however old its segments. It now opens in
the room of its released reserve (``collector.storage.disk_space``), lets retention sign
and delete before it writes any batch, and answers batches it cannot store with
``storage_unavailable``; with no reserve left, it waits for free space and starts by
itself once there is some.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from collector.index import Index
from collector.integrity import digests
from collector.storage import disk_space, indexer
from collector.storage.disk_space import RESERVE_BYTES, Reserve
from collector.storage.errors import StorageError
from tests.collector.storage_helpers import events, open_store, segment_files, wait_until
from tests.faults.fleet import Collector, Stored, report, wait_for
from tests.faults.full_disk import (
    IN_NAMESPACE,
    RETAINING_4_S,
    WAITING,
    collector_and_app_on_a_tmpfs,
    fill,
    fill_paused,
    finish,
    nothing_lost_nothing_twice,
    read_stored,
    rerun_in_a_user_namespace,
    retention_under_way,
    shown_on_failure,
    tmpfs,
    verify,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


#: What the collector logs for a batch its store refused (answered storage_unavailable).
REFUSED = "ingest: the store failed to write"


def full(path: Path) -> bool:
    return os.statvfs(path).f_bavail == 0


def wait_for_waiting(collector: Collector) -> None:
    """Until the collector says it waits for free space (or exits: as it did before)."""
    wait_for(lambda: WAITING in "".join(collector.output) or not collector.alive, 60,
             "the collector to say it waits for free space")
    assert collector.alive, "".join(collector.output)[-3000:]


def test_restarted_on_a_full_disk_it_starts_and_retention_frees_the_disk(tmp: Path) -> None:
    """Stopped, the disk filled to the last byte by another file, started again: the
    store opens in the reserve's room, retention's first pass signs and deletes the
    expired segments before any batch takes that room, and acknowledgements resume with
    the ballast still in place; the reserve is made again, and verify says valid."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    with collector_and_app_on_a_tmpfs(tmp, *RETAINING_4_S) as (collector, app, ballast):
        reserve = collector.data_dir / "reserve"
        with shown_on_failure(collector):
            wait_for(lambda: retention_under_way(collector), 60,
                     "retention under way, the reserve made")
            assert collector.stop() == 0
            # Every sealed segment past retention's 4 s when it starts again: its first
            # pass has something to delete (the app spools meanwhile).
            time.sleep(4.5)
            fill(ballast)
            assert full(collector.data_dir)
            collector.start()  # before: exited, "disk I/O error" (the index's -shm)
            acked = app.acknowledged_count()
            wait_for(lambda: app.acknowledged_count() > acked + 1000, 30,
                     "acknowledgements with the ballast still filling the disk")
            wait_for(reserve.exists, 60, "the reserve made again")
            assert ballast.exists() and collector.alive
        result = finish(collector, app)  # the ballast still in place
        log = "".join(collector.output)
        ballast.unlink()  # room for verify's own files (its SQLite reader's -shm)
        done = verify(collector.data_dir)
    assert "so that the store can open" in log, log[-3000:]
    assert "retention: deleted" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert result["delivered"] and result["dropped"] == 0, result
    report("restart on a disk full to the last byte, retention frees it",
           emitted=result["emitted"], spooled=result["spooled"], verify_exit=done.returncode)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_retention_runs_before_the_first_batch_after_a_start(tmp: Path) -> None:
    """The ordering the test above needs, without its timing: a batch submitted as soon
    as the store is open is written after retention's first pass. Written before (the
    first pass came 0.5 s later), the apps' retried batches took the room the released
    reserve had left for retention's digest, and retention deleted nothing, for good."""
    with open_store(tmp, max_segment_bytes=4096) as store:
        for _ in range(6):
            store.write(events(6))
        assert store.stats()["segments"]["sealed"] >= 2
    with open_store(tmp, max_segment_bytes=4096, retention_days=0.001 / 86_400) as store:
        store.write(events(1))  # the commit thread's first group
        deleted_before = store.stats()["retention_deleted"]
    assert deleted_before >= 2


def test_restarted_on_a_full_disk_it_refuses_batches_until_space_is_freed(tmp: Path) -> None:
    """Without retention to free anything: it starts all the same (in the reserve's
    room), answers the batches it cannot store with ``storage_unavailable`` (the app
    spools), and takes them once an operator deletes a file: nothing lost, nothing
    twice."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    with collector_and_app_on_a_tmpfs(tmp, "--max-segment-bytes", "256KiB") as (
            collector, app, ballast):
        with shown_on_failure(collector):
            wait_for(lambda: app.acknowledged_count() > 500
                     and (collector.data_dir / "reserve").exists(), 60, "acks, the reserve")
            assert collector.stop() == 0
            fill(ballast)
            assert full(collector.data_dir)
            mark = len(collector.output)  # a refusal may come before start() returns
            collector.start()  # before: exited, "disk I/O error"
            wait_for(lambda: REFUSED in "".join(collector.output[mark:]), 60,
                     "a batch refused for the full disk")
            refusal = next(line for line in collector.output[mark:] if REFUSED in line)
            # The segment's append says ENOSPC, the index's commit SQLite's "disk is
            # full": a batch smaller than the room the opening left (16 KiB of the slice
            # here) is appended, then refused by the index, so the apps' batch sizes
            # decide which. A CI run (2026-11-27) waited 60 s for the first words alone,
            # in vain (test_refusals_of_small_batches_say_the_disk_is_full).
            assert any(full_disk in refusal for full_disk in
                       ("No space left on device", "disk is full")), refusal
            spooled = len(app.spooled())
            wait_for(lambda: len(app.spooled()) > spooled, 60, "the app to spool")
            assert collector.alive
            ballast.unlink()  # nobody restarts anything
            acked = app.acknowledged_count()
            wait_for(lambda: app.acknowledged_count() > acked + 500, 60,
                     "acknowledgements once space is freed")
        result = finish(collector, app, free=ballast)
        log, stored = read_stored(collector)
    assert "so that the store can open" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    nothing_lost_nothing_twice(stored, app, result)


def test_refusals_of_small_batches_say_the_disk_is_full(tmp: Path) -> None:
    """Why the test above takes SQLite's words as well as ENOSPC's: opened in a slice of
    the reserve, the store has some room left; a batch that fits it is appended, then
    refused by the index's commit ("database or disk is full"), and cut from the
    segment again; only a larger one is refused by the append itself. Neither stays:
    once space is freed both are written, once."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    small, large = events(2), events(200)  # ~1 KiB; more than a slice (64 KiB)
    with tmpfs(tmp / "disk", "16m") as disk:
        data_dir = disk / "data"
        with open_store(data_dir) as store:
            store.write(events(5))
            wait_until(lambda: Reserve(data_dir).size() == RESERVE_BYTES)
        fill(disk / "ballast")
        with open_store(data_dir) as store:
            room = disk_space.free_bytes(data_dir)
            assert room >= 4096, f"the opening left {room} bytes: no batch fits them"
            size = store.stats()["active_segment"]["bytes"]
            refusals = []
            for batch in (small, large):
                with pytest.raises(StorageError) as refused:
                    store.write(batch)
                refusals.append(str(refused.value))
            assert store.stats()["active_segment"]["bytes"] == size
            (disk / "ballast").unlink()
            written = [len(store.write(batch).written) for batch in (small, large)]
    assert "disk is full" in refusals[0] and "No space left" not in refusals[0], refusals
    assert "No space left on device" in refusals[1], refusals
    assert written == [2, 200]


def test_restarted_on_a_full_disk_it_signs_what_it_holds_at_once(tmp: Path) -> None:
    """The disk filled while the collector ran, and it was stopped before space was
    freed: the digests of its newest records could not be written (its stop checkpoint
    neither). Started again on the full disk, and stopped again before space is freed:
    the start checkpoint was written in the reserve's room, and verify finds every
    record signed. (Only queued, a start checkpoint the disk refused was lost with the
    next stop, and verify called the active segment's digests removed: INVALID. Whether
    the index, opening, needs room first depends on what the full disk refused at the
    stop; the next test takes that out.)"""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    with collector_and_app_on_a_tmpfs(tmp, "--max-segment-bytes", "256KiB") as (
            collector, app, ballast):
        try:
            # A segment sealed: the active one has no digest yet (the first comes with
            # the interval, 300 s, or the stop).
            wait_for(lambda: app.acknowledged_count() > 500
                     and (collector.data_dir / "reserve").exists()
                     and len(list((collector.data_dir / "segments").iterdir())) >= 2, 60,
                     "acks, the reserve, a sealed segment")
            fill_paused(collector, ballast)  # to the last byte
            spooled = len(app.spooled())
            wait_for(lambda: len(app.spooled()) > spooled, 60, "the app to spool")
            app.sigkill()  # no batch in the next run: what it signs is what is there
            assert collector.stop() == 0
            logs = ["".join(collector.output)]
            assert full(collector.data_dir)
            collector.start()
            assert collector.stop() == 0  # on the full disk still
            logs.append("".join(collector.output))
            ballast.unlink()  # room for verify's own files (its SQLite reader's -shm)
            done = verify(collector.data_dir)
            collector.start()  # and once more with space: nothing to repair
            reopened = collector.repair_line()
            assert collector.stop() == 0
            logs.append("".join(collector.output))
        finally:
            ballast.unlink(missing_ok=True)
            collector.kill()
        log = "".join(logs)
        stored = Stored.read(collector.data_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Traceback" not in log, log[-3000:]
    assert reopened.endswith("nothing to repair"), reopened
    assert stored.missing(app.acknowledged()) == []
    stored.check_exactly_once()


def test_the_start_checkpoint_is_written_in_the_reserves_room(
        tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above without its dependence on what else the full disk refused: the
    store opens (its index needs no new room) but its start checkpoint cannot be
    written until the reserve is released. It is written during ``open``: before, it
    stayed queued, the reserve untouched."""
    reserve = tmp / "reserve"
    with open_store(tmp, max_segment_bytes=4096) as store:
        for _ in range(4):
            store.write(events(6))
        wait_until(reserve.exists)
    append = digests.append

    def full_until_released(directory: Path, segment_name: str, line: bytes) -> Path:
        if reserve.exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        return append(directory, segment_name, line)

    monkeypatch.setattr(digests, "append", full_until_released)
    with open_store(tmp, max_segment_bytes=4096) as store:
        integrity = store.stats()["integrity"]
    assert integrity["pending_digests"] == 0, integrity
    assert integrity["written"] >= 1


def test_an_open_tried_again_in_the_reserves_room_leaves_nothing_open(
        tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An opening that fails for want of space half-way (its segment file opened, its
    index too) is closed before it is tried again in the reserve's room: a collector
    waiting for space tries every 5 s, for hours maybe."""
    from collector.integrity.ledger import Ledger

    reserve = tmp / "reserve"
    with open_store(tmp, max_segment_bytes=4096) as store:
        store.write(events(6))
        wait_until(reserve.exists)
    started = Ledger.started

    def full_until_released(self: Ledger, *args: Any) -> None:
        if reserve.exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        started(self, *args)

    monkeypatch.setattr(Ledger, "started", full_until_released)
    assert _open_files_in(tmp) == []
    with open_store(tmp, max_segment_bytes=4096) as store:
        assert store.write(events(1)).written
    # The data directory's files, not every descriptor of the process: another test's
    # daemon thread closing its own files meanwhile made the count differ.
    assert _open_files_in(tmp) == []


def _open_files_in(directory: Path) -> list[str]:
    """The files under ``directory`` this process holds open."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(f"{directory}/"):
                held.append(target)
    return held


@pytest.mark.parametrize("refused", ["opening", "start checkpoint"])
def test_a_start_on_a_full_disk_takes_a_slice_of_the_reserve_not_all_of_it(
        tmp: Path, monkeypatch: pytest.MonkeyPatch, refused: str) -> None:
    """Start-up released the whole reserve when it met the full disk, though it needed
    a few KiB of it: the rest went to the apps' retried batches while retention had
    nothing to delete yet, and the first pass that had, later on the same full disk,
    found no reserve to sign in (retention stalled until space was freed by hand). It
    spends the reserve a slice at a time now, as retention does, the rest kept."""
    from collector.integrity.ledger import Ledger

    reserve = Reserve(tmp)
    with open_store(tmp, max_segment_bytes=4096) as store:
        store.write(events(6))
        wait_until(lambda: reserve.size() == RESERVE_BYTES)
    tries: list[int] = []

    def full_while_whole(real: Any) -> Any:
        def refuse(*args: Any) -> Any:
            tries.append(reserve.size())
            if reserve.size() == RESERVE_BYTES:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args)
        return refuse

    if refused == "opening":
        monkeypatch.setattr(Ledger, "started", full_while_whole(Ledger.started))
    else:
        monkeypatch.setattr(digests, "append", full_while_whole(digests.append))
    # The disk stays full: the reserve is not made whole again by the running store.
    monkeypatch.setattr(disk_space, "free_bytes", lambda _: 0)
    with open_store(tmp, max_segment_bytes=4096) as store:
        assert store.write(events(1)).written
        left = reserve.size()
    assert tries[0] == RESERVE_BYTES, tries  # the full disk was met
    assert left == RESERVE_BYTES - disk_space.SLICE


def test_a_torn_tail_longer_than_a_slice_is_quarantined_in_the_reserves_room(
        tmp: Path) -> None:
    """Restarted on a disk full to the last byte with a torn record of 100 KiB at the
    end of its active segment (a line may be 256 KiB): its copy to quarantine/ needs
    two slices of the reserve. Each try of the opening left its partial copy behind,
    holding the slice the next try was given, so no try could make a whole copy: the
    reserve went, all of it, into partial copies, and the store could not open
    (``DiskFullError``); released whole, it had opened. Now a copy that fails goes."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    with tmpfs(tmp / "disk", "16m") as disk:
        data_dir = disk / "data"
        with open_store(data_dir) as store:
            store.write(events(5))
            wait_until(lambda: Reserve(data_dir).size() == RESERVE_BYTES)
        torn = b'{"seq":6,"principal":"' + b"x" * (100 * 1024)
        with segment_files(data_dir)[-1].open("ab") as segment:
            segment.write(torn)
        fill(disk / "ballast")
        assert full(data_dir)
        with open_store(data_dir) as store:  # before: DiskFullError
            assert store.write(events(1)).written
        copies = [p.read_bytes() for p in (data_dir / "quarantine").iterdir()]
        assert copies == [torn]
        assert Reserve(data_dir).size() > 0  # what the opening did not need is kept


def test_restarted_on_a_full_disk_without_a_reserve_it_waits_for_space(tmp: Path) -> None:
    """No reserve left to release (and no byte free): the store cannot open. The
    collector says so and what to do, stays up, and starts by itself once an operator
    frees space; the app spooled meanwhile and loses nothing."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    with collector_and_app_on_a_tmpfs(tmp, "--max-segment-bytes", "256KiB") as (
            collector, app, ballast):
        with shown_on_failure(collector):
            wait_for(lambda: app.acknowledged_count() > 500, 60, "acks")
            assert collector.stop() == 0
            (collector.data_dir / "reserve").unlink(missing_ok=True)
            fill(ballast)
            assert full(collector.data_dir)
            ready = collector.spawn()
            wait_for_waiting(collector)  # before: exit code 1, "disk I/O error"
            time.sleep(1.0)
            assert collector.alive and not ready.is_set(), "".join(collector.output)
            ballast.unlink()  # nobody restarts anything
            assert ready.wait(30) and collector.ready_line, "".join(collector.output)
            acked = app.acknowledged_count()
            wait_for(lambda: app.acknowledged_count() > acked + 500, 60,
                     "acknowledgements once space is freed")
        result = finish(collector, app, free=ballast)
        log, stored = read_stored(collector)
    assert "free space on that disk" in log and "starts by itself" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    nothing_lost_nothing_twice(stored, app, result)


def test_a_collector_waiting_for_space_stops_on_sigterm(tmp: Path) -> None:
    """SIGTERM while it waits for free space: a clean exit, at once."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    with tmpfs(tmp / "disk", "16m") as disk:
        collector = Collector(disk / "data").start()
        assert collector.stop() == 0
        (collector.data_dir / "reserve").unlink(missing_ok=True)
        fill(disk / "ballast")
        collector.spawn()
        wait_for_waiting(collector)
        assert collector.proc is not None
        started = time.monotonic()
        collector.proc.send_signal(signal.SIGTERM)
        assert collector.proc.wait(10) == 0, "".join(collector.output)
        assert time.monotonic() - started < 2
    assert "stopped before the store could open" in "".join(collector.output)


def test_a_chunk_build_refused_by_a_full_disk_is_logged_without_a_traceback(
        tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A full disk is no bug: the indexer says what it means (the chunk is indexed once
    the disk has room, its records are found meanwhile) in one line. It logged a traceback,
    in a collector started on a full disk too (seen in the test above)."""
    def full_disk(*_: Any) -> None:
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorname = "SQLITE_FULL"
        raise exc

    Index(tmp / "index.sqlite").close()
    monkeypatch.setattr(indexer, "build_chunk_indexes", full_disk)
    background = indexer.ChunkIndexer(tmp / "index.sqlite", indexer.WriteLock())
    with caplog.at_level(logging.ERROR, logger="collector.index"):
        background.submit(1)
        assert background.wait(0, timeout=10)
        background.close()
    failed = [r for r in caplog.records if "indexing chunk 1 failed" in r.getMessage()]
    assert failed and all(r.exc_info is None for r in failed), failed
    assert "the disk is full" in failed[0].getMessage()


def test_housekeeping_refused_by_a_full_disk_is_logged_without_a_traceback(
        tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The same for the store's commit thread: housekeeping (an idle chunk closed,
    sources forgotten, retention) that SQLite refuses for a full disk, as it may at
    every pass of a store started on a full disk, is one line, not a traceback a pass."""
    from collector.storage.segment_set import SegmentSet

    def full_disk(*_: Any) -> None:
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorname = "SQLITE_FULL"
        raise exc

    real_retention = SegmentSet.apply_retention
    monkeypatch.setattr(SegmentSet, "apply_retention", full_disk)
    with caplog.at_level(logging.ERROR, logger="collector.store"), \
            open_store(tmp) as store:
        store.write(events(1))
        wait_until(lambda: len([r for r in caplog.records if "housekeeping" in r.message])
                   >= 2)
        assert "disk is full" in str(store.stats()["last_error"])
        monkeypatch.setattr(SegmentSet, "apply_retention", real_retention)  # room again
        # No longer said as what fails now (it was, for good).
        wait_until(lambda: store.stats()["last_error"] is None)
    failed = [r for r in caplog.records if "housekeeping" in r.getMessage()]
    assert all(r.exc_info is None for r in failed), failed
    assert "the disk is full" in failed[0].getMessage()
