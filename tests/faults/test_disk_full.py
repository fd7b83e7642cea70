"""Disk full under the collector: its data directory is on a small tmpfs the test
mounts (as root; otherwise the test runs itself again inside an unprivileged user and
mount namespace, ``unshare -Urm``, where mounting a tmpfs is allowed) and fills.

While the disk is full: no partial record stays in a segment, nothing that was not
written is acknowledged, the apps spool, the collector stays up (and a SIGKILL and a
restart on the full disk lose nothing: it starts, or says it waits for free space).
Once space is freed, ingestion resumes by itself: nobody restarts anything.
(``test_disk_full_start``: restarts on a disk full to the last byte.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest

from audit_middleware.wire import ErrorCode, ErrorReply, FrameType
from collector import query, stats_file
from collector.single_flight import SingleFlight
from collector.storage import indexer
from collector.storage.chunks import CLOSED, INDEXED
from collector.storage.errors import StorageError
from tests.api.served import serving
from tests.collector.storage_helpers import event, events, open_store, wait_until
from tests.e2e.harness import RawClient, wire_line
from tests.faults.fleet import Collector, report, rng, scaled, wait_for
from tests.faults.full_disk import (
    IN_NAMESPACE,
    RETAINING_4_S,
    WAITING,
    collector_and_app_on_a_tmpfs,
    fill,
    fill_paused,
    finish,
    read_stored,
    rerun_in_a_user_namespace,
    retention_under_way,
    shown_on_failure,
    tmpfs,
    verify,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(scaled(300, 3600))]

EPISODES = scaled(2, 10)  # disk-full episodes; the last one includes a SIGKILL


def test_disk_full_stops_acks_not_the_app_and_ingestion_resumes_by_itself(tmp: Path) -> None:
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    r = rng("disk full")
    with collector_and_app_on_a_tmpfs(tmp, "--max-segment-bytes", "1MiB") as (
            collector, app, ballast):
        restarted_full = ""
        refused = {"appending to": 0, "syncing or indexing": 0}  # segment, index
        with shown_on_failure(collector):
            for episode in range(EPISODES):
                mark = len(collector.output)
                acked = app.acknowledged_count()
                wait_for(lambda n=acked: app.acknowledged_count() > n + 100, 60, "acks")
                # Full, or nearly: then a few more appends fit, and the write that
                # fails may be the segment's or the index's (SQLite's WAL).
                os.truncate(ballast, fill(ballast) - r.choice([0, 0, 8192, 65536, 262144]))
                spooled = len(app.spooled())
                wait_for(lambda n=spooled: len(app.spooled()) > n, 60,
                         "the app to spool while the disk is full")
                time.sleep(r.uniform(0.2, 1.0))
                assert collector.alive, "".join(collector.output)
                log = "".join(collector.output[mark:])
                assert "No space left on device" in log or "disk is full" in log, log
                for doing in refused:
                    refused[doing] += log.count(f"audit store: {doing}")
                if episode == EPISODES - 1:  # killed on the full disk, started on it
                    collector.sigkill()
                    restarted_full = start_on_a_full_disk(collector)
                ballast.unlink()  # space again: nobody restarts anything
                if restarted_full == "waiting" and episode == EPISODES - 1:
                    wait_for(lambda: bool(collector.ready_line), 30,
                             "the waiting collector to start by itself")
                acked = app.acknowledged_count()
                wait_for(lambda n=acked: app.acknowledged_count() > n + 100, 60,
                         "ingestion to resume by itself once space is freed")
        result = finish(collector, app, free=ballast)
        _, stored = read_stored(collector)
        # The full disk leaves nothing half-written (a refused append is cut back). The
        # SIGKILL of the last episode may land inside an append, though (between a
        # batch's partial write and its cut back, as inside any write), and the start
        # after it quarantines that torn tail: one file at most, an unterminated line
        # of records nobody acknowledged (a CI run, 2026-11-27: that kill came 3 s in).
        quarantined = list((collector.data_dir / "quarantine").iterdir())
        assert len(quarantined) <= 1, quarantined
        assert all(b"\n" not in q.read_bytes() for q in quarantined), quarantined
        collector.start()  # nothing to repair: the full disk left nothing half-written
        reopened = collector.repair_line()
        assert collector.stop() == 0

    acknowledged = set(app.acknowledged())
    lost = stored.missing(acknowledged)
    report("disk full (tmpfs)", episodes=EPISODES,
           segment_writes_refused=refused["appending to"],
           index_writes_refused=refused["syncing or indexing"],
           emitted=result["emitted"], spooled=result["spooled"],
           acknowledged=len(acknowledged), stored=len(stored.in_segments), lost=len(lost))
    assert lost == []
    stored.check_exactly_once()
    assert result["delivered"] and result["dropped"] == 0, result
    assert len(stored.in_segments) == result["emitted"]
    assert result["spooled"] > 0
    assert reopened.endswith("nothing to repair"), reopened
    assert restarted_full in ("started", "waiting"), restarted_full


def test_the_readiness_probe_says_disk_full_and_ready_once_space_is_freed(
        tmp: Path) -> None:
    """``GET /healthz`` of a real collector on a real full disk: 503 ``disk_full`` while
    batches are refused, 200 once space is freed, before any batch is written again (a
    balancer that took the collector out of rotation sends none to show it)."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    with tmpfs(tmp / "disk", "16m") as disk, serving(disk / "data") as (collector, url):
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        fill(disk / "ballast")
        client = RawClient(collector.socket)
        try:
            client.hello()
            for n in range(1, 100):  # the last pages' slack may take a batch or two
                seqs = list(range(50 * n - 49, 50 * n + 1))
                kind, payload = client.batch(n, [wire_line(i) for i in seqs], seqs)
                if kind is FrameType.ERROR:
                    break
            assert ErrorReply.decode(payload).code == ErrorCode.STORAGE_UNAVAILABLE
        finally:
            client.close()
        full = httpx.get(f"{url}/healthz", timeout=10)
        (disk / "ballast").unlink()
        # Seen by the idle commit thread's next look at the free space (every 0.5 s).
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=10).status_code == 200, 30,
                 "the probe to say ready once space was freed")
    assert full.status_code == 503, full.text
    assert orjson.loads(full.content)["reason"] == "disk_full"
    assert str(disk) not in full.text and "No space" not in full.text


def test_retention_frees_a_disk_full_to_the_last_byte_by_itself(tmp: Path) -> None:
    """Retention signs a digest before it deletes a segment (verify then tells retention
    from theft). On a disk full to the last byte that digest could not be written: the
    collector deleted nothing and took nothing until someone freed space by hand, however
    old its segments. It now keeps a reserve file (``collector.storage.disk_space``) and
    signs in its space: with the ballast left in place, acknowledgements resume, and the
    signed history stays whole."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    with collector_and_app_on_a_tmpfs(tmp, *RETAINING_4_S) as (collector, app, ballast):
        reserve = collector.data_dir / "reserve"
        with shown_on_failure(collector):
            # Full of its own records: retention under way, then the ballast takes what
            # is left (a disk full of others' files leaves retention nothing to delete).
            # And the index's WAL at its usual size, checkpointed once (up to 16 MiB, the
            # most of this small disk's share of the store until then).
            wait_for(lambda: retention_under_way(collector)
                     and (collector.data_dir / "index.sqlite").stat().st_size > 2**20, 60,
                     "retention under way, the reserve made, the WAL checkpointed")
            mark = len(collector.output)
            released = 0
            # Filled up to five times: a store write the disk cut short and cut back
            # can leave a few KiB free, enough for one digest without the reserve (three
            # were not always enough under the whole suite's load: 1 CI run of 4 on
            # 2026-11-28; each fill is a second or two).
            for _ in range(5):
                fill_paused(collector, ballast)  # to the last byte, and left there
                acked = app.acknowledged_count()
                wait_for(lambda n=acked: app.acknowledged_count() > n + 1000, 60,
                         "acknowledgements with the ballast still filling the disk")
                released = "".join(collector.output[mark:]).count("released the")
                if released:
                    break
            assert released, "the disk never came to need the reserve"
            # Made again out of what retention freed, ready for the next full disk.
            wait_for(reserve.exists, 60, "the reserve made again")
            acked = app.acknowledged_count()
            wait_for(lambda: app.acknowledged_count() > acked + 200, 60,
                     "acknowledgements, retention going on with the ballast in place")
            assert ballast.exists()
        # The app drains its spool with the ballast still in place: it stalled in 1 run
        # of 3-4 (the WAL grew into the room retention freed, and its checkpoint never
        # got any: the next test).
        result = finish(collector, app)
        log = "".join(collector.output)
        ballast.unlink()  # room for verify's own files (its SQLite reader's -shm)
        done = verify(collector.data_dir)
    assert result["delivered"] and result["dropped"] == 0, result
    assert "Traceback" not in log, log[-3000:]
    report("retention on a disk full to the last byte", emitted=result["emitted"],
           spooled=result["spooled"], verify_exit=done.returncode)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_a_chunk_build_the_full_disk_refused_is_done_once_there_is_room(
        tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A closed chunk whose postings build met a full disk stayed unindexed until the
    next start: every query scanned its rows for as long as the collector ran. It is
    built again, with backoff, once the disk has room, without a restart; said once
    when refused and once when done, and the store's queries are right throughout."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    principals = [f"user-{i % 7}" for i in range(5_000)]
    expected = {p: principals.count(p) for p in set(principals)}

    def chunk_states(data_dir: Path) -> list[int]:
        con = sqlite3.connect(f"file:{data_dir / 'index.sqlite'}?mode=ro", uri=True)
        try:
            return [s for (s,) in con.execute("SELECT state FROM chunks ORDER BY chunk")]
        finally:
            con.close()

    def queries_are_right(data_dir: Path) -> None:
        for principal, count in expected.items():
            found = list(query.iter_records(data_dir, query.Filters(principal=principal)))
            assert len(found) == count and {r["principal"] for r in found} == {principal}

    with tmpfs(tmp / "disk", "32m") as disk, \
            caplog.at_level(logging.DEBUG, logger="collector.index"):
        data = disk / "data"
        with open_store(data) as store:
            store.write([event(principal=p) for p in principals])
        # Opened again, its index's WAL copied back at the stop: room for the open
        # chunk to close (a catalog row, its WAL frames), none for its postings, as
        # the store idles with over 4,096 rows in it and closes it itself.
        with open_store(data) as store:
            ballast = disk / "ballast"
            os.truncate(ballast, fill(ballast) - 64 * 1024)
            wait_until(lambda: any("indexing chunk" in r.getMessage()
                                   for r in caplog.records), timeout=30)
            assert chunk_states(data) == [CLOSED]
            queries_are_right(data)  # its rows read one by one meanwhile
            time.sleep(3)  # retried (1 s, 2 s...), refused again, said no more
            assert chunk_states(data) == [CLOSED]
            assert store.stats()["unindexed_chunks"] == 1
            ballast.unlink()  # room again: nobody restarts anything
            wait_until(lambda: chunk_states(data) == [INDEXED], timeout=60)
            queries_are_right(data)
            assert store.stats()["unindexed_chunks"] == 0
            store.write([event(principal="user-0")])  # commits go on as before
            expected["user-0"] += 1
            queries_are_right(data)
    said = [r for r in caplog.records if r.levelno >= logging.INFO]
    refused = [r for r in said if "indexing chunk" in r.getMessage()]
    assert len(refused) == 1 and refused[0].exc_info is None, said
    assert "the disk is full" in refused[0].getMessage()
    assert "once the disk has room" in refused[0].getMessage()
    built = [r for r in said if "room again" in r.getMessage()]
    assert len(built) == 1 and built[0].levelno == logging.INFO, said
    assert [r for r in caplog.records if r.levelno == logging.DEBUG and
            "refused again" in r.getMessage()], "never tried again while the disk was full"


def test_the_stats_file_on_a_full_disk_is_warned_of_once_and_its_recovery_said(
        tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """``serve`` writes its live counters to ``ingest-stats.json`` every 5 s. On a full
    disk each write warned again, a line every 5 s for as long as the disk stayed full:
    now a warning when the writes start failing (what failed and what to do), a reminder
    at most every ``STATS_REMINDER``, and one line when a write succeeds again."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    failing, recovered = 10, 3
    monkeypatch.setattr(stats_file, "STATS_INTERVAL", 0.01)
    with tmpfs(tmp / "disk", "1m") as disk, \
            caplog.at_level(logging.DEBUG, logger="collector"):
        ballast = disk / "ballast"
        fill(ballast)
        calls = 0
        done = asyncio.Event()

        def store_stats() -> dict[str, Any]:
            nonlocal calls
            calls += 1
            if calls == failing + 1:
                ballast.unlink()  # room again, before this write
            if calls == failing + recovered:
                loop.call_soon_threadsafe(done.set)
            return {"events": calls}

        async def run() -> None:
            nonlocal loop
            loop = asyncio.get_running_loop()
            stub = SimpleNamespace(stats=dict)  # the ingest server, the integrations
            task = asyncio.create_task(stats_file._write_stats(  # type: ignore[arg-type]
                stub, SingleFlight(store_stats, "store-stats"),
                SimpleNamespace(data_dir=disk), stub))
            await asyncio.wait_for(done.wait(), 30)
            await asyncio.sleep(0.2)  # the last write done
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        loop: Any = None
        asyncio.run(run())
        # The cancel may come while a write is under way on its own thread (a loaded
        # machine): its temporary file is renamed as it ends. One a failed write left
        # would stay: "a write cut short gives its room back" fails here then.
        wait_for(lambda: not list(disk.glob("*.tmp")), 10,
                 "the temporary file of the last write to be renamed or removed")
        written = orjson.loads((disk / stats_file.STATS_FILE).read_bytes())
    said = [r for r in caplog.records if r.levelno >= logging.INFO]
    warned = [r for r in said if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and warned[0].exc_info is None, [r.getMessage() for r in said]
    assert "No space left on device" in warned[0].getMessage()
    assert "free space" in warned[0].getMessage()
    back = [r for r in said if r.levelno == logging.INFO]
    assert len(back) == 1 and stats_file.STATS_FILE in back[0].getMessage(), said
    assert written["store"]["events"] >= failing + recovered


def test_the_stats_file_failing_for_long_is_a_reminder_at_a_low_rate(
        tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The stats file's warning comes back every ``STATS_REMINDER`` while its writes fail
    (here for another reason than a full disk: a directory in the way of its temporary
    file), with how many failed and the fix for that reason; its recovery said once."""
    monkeypatch.setattr(stats_file, "STATS_REMINDER", 0.3)
    (tmp / stats_file.STATS_FILE).with_suffix(".tmp").mkdir()
    stats = stats_file.StatsFile(tmp / stats_file.STATS_FILE)
    with caplog.at_level(logging.INFO, logger="collector"):
        assert [stats.write({}) for _ in range(5)] == [False] * 5
        time.sleep(0.4)
        assert [stats.write({}) for _ in range(5)] == [False] * 5
        (tmp / stats_file.STATS_FILE).with_suffix(".tmp").rmdir()
        assert [stats.write({"n": 1}) for _ in range(3)] == [True] * 3
    said = [r.getMessage() for r in caplog.records]
    warned = [m for m in said if m.startswith("could not write")]
    assert len(warned) == 2, said
    assert "(1 failed write(s) in a row)" in warned[0] and "Is a directory" in warned[0]
    # Not "make it writable": it is; the error says what is in the way.
    assert "writable" not in warned[0] and f"check {tmp}" in warned[0], warned[0]
    assert "(6 failed write(s) in a row)" in warned[1]
    assert [m for m in said if "again after 10 failed write(s)" in m] == said[2:], said


def test_the_stats_file_failing_for_another_reason_is_said_at_once(
        tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Writes that go on failing for another reason than the one warned of (the disk
    freed, then the directory made read-only) are warned of at once, with that reason's
    fix: they were said only at the hourly reminder, the log telling the operator to
    free space that was free, for up to an hour."""
    errors = iter([errno.ENOSPC] * 3 + [errno.EROFS] * 3)
    real_open = os.open
    path = tmp / stats_file.STATS_FILE

    def failing_open(file: Any, *args: Any, **kwargs: Any) -> int:
        if Path(file) == path.with_suffix(".tmp"):
            code = next(errors)
            raise OSError(code, os.strerror(code), str(file))
        return real_open(file, *args, **kwargs)

    stats = stats_file.StatsFile(path)
    monkeypatch.setattr(stats_file.os, "open", failing_open)
    with caplog.at_level(logging.INFO, logger="collector"):
        assert [stats.write({}) for _ in range(6)] == [False] * 6
    said = [r.getMessage() for r in caplog.records]
    warned = [m for m in said if m.startswith("could not write")]
    assert len(warned) == 2, said
    assert "No space left" in warned[0] and "free space" in warned[0]
    assert "Read-only" in warned[1] and "free space" not in warned[1]


def test_the_room_retention_frees_goes_to_the_index_checkpoint_first(
        tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What made the test above stall in 1 run of 3-4 (the app's drain answered
    ``storage_unavailable`` past 120 s), without its timing. The ballast filled the disk
    while the index's WAL held pages past the end of ``index.sqlite`` (a checkpoint
    under way, or rows since the last one): the checkpoint had to grow that file and
    could not, so the WAL could not be written again from its start, and every commit
    grew it instead. The indexer tried again about once a second, but the store's
    commits took each room retention freed first: the WAL grew 17.3 -> 20.4 MiB, the
    index 1.5 -> 1.9 MiB of the 2.1 it needed, retention deleted every sealed segment,
    and nothing was left to free, for good. The room a retention pass frees now goes to
    the checkpoint before the next commit; here the indexer's own checkpoints are taken
    out after the fill, so nothing else gives it that room."""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return
    checkpoints = threading.Event()
    checkpoints.set()
    real_checkpoint = indexer.ChunkIndexer._checkpoint

    def indexer_checkpoint(self: indexer.ChunkIndexer) -> None:
        if checkpoints.is_set():
            real_checkpoint(self)

    monkeypatch.setattr(indexer.ChunkIndexer, "_checkpoint", indexer_checkpoint)
    with tmpfs(tmp / "disk", "16m") as disk, \
            open_store(disk / "data", max_segment_bytes=64 * 1024,
                       retention_days=2 / 86_400) as store:
        # Sealed segments of every age up to retention's, the index checkpointed (the
        # disk is smaller than the WAL may grow: the indexer checkpoints each time).
        end = time.monotonic() + 3
        while time.monotonic() < end:
            store.write(events(100))
            time.sleep(0.05)
        checkpoints.clear()
        for _ in range(10):  # rows past the end of index.sqlite, in the WAL only
            store.write(events(100))
        fill(disk / "ballast")
        written = refused = 0
        deadline = time.monotonic() + 60
        while written < 200 and time.monotonic() < deadline:  # an app retrying
            try:
                store.write(events(50))
                written += 1
            except StorageError:
                refused += 1
                time.sleep(0.02)
        stats = store.stats()
    assert written == 200, (written, refused, stats["last_error"])



def test_a_checkpoint_retention_cannot_pay_for_is_done_in_the_room_an_operator_frees(
        tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review asked whether anything starts the index's WAL checkpoint again once the
    room retention frees is not enough for it (``Store._checkpoint_in_freed_room``
    tries it after deletions only, and says it is "tried again after its next
    deletions"): the store would refuse batches for good, space freed by hand or not.
    It is started again: the indexer checkpoints at each of its passes (about once a
    second) while the disk has less room than ``CHECKPOINT_BYTES``. Here retention frees
    nothing at all (no segment is old enough), and the disk is filled while the WAL
    holds pages past the end of ``index.sqlite`` (a WAL under 16 MiB on a disk with more
    room than that is left as it is): batches are refused; room is freed by hand, and
    with no retention pass and no batch the checkpoint is done, then batches are taken.
    (With the indexer's checkpoints taken out, the WAL's pages stayed past the end, and
    the batches taken grew the WAL instead.)"""
    if os.geteuid() != 0 and not os.environ.get(IN_NAMESPACE):
        rerun_in_a_user_namespace()
        return

    def past_the_end(data_dir: Path) -> int:
        """Bytes the index's checkpoint has yet to add to ``index.sqlite``."""
        con = sqlite3.connect(f"file:{data_dir / 'index.sqlite'}?mode=ro", uri=True)
        try:
            (pages,) = con.execute("PRAGMA page_count").fetchone()
            (page_size,) = con.execute("PRAGMA page_size").fetchone()
        finally:
            con.close()
        return int(pages * page_size - (data_dir / "index.sqlite").stat().st_size)

    # The indexer's checkpoints wait while the ballast fills the disk: one that came
    # while the fill had taken all but the last MiBs (under 16 MiB left, it checkpoints)
    # copied the WAL in that room, and the disk filled with nothing past the end (short
    # 0: a fill descheduled there, as under CPU load; a 2 s pause put in the fill at
    # 10 MiB left did it every time). Counted after it, to wait for refused ones rather
    # than a fixed time.
    filling = threading.Lock()
    tried = {"n": 0}
    real_checkpoint = indexer.ChunkIndexer._checkpoint

    def indexer_checkpoint(self: indexer.ChunkIndexer) -> None:
        with filling:
            real_checkpoint(self)
        tried["n"] += 1

    monkeypatch.setattr(indexer.ChunkIndexer, "_checkpoint", indexer_checkpoint)
    with tmpfs(tmp / "disk", "48m") as disk, \
            open_store(disk / "data", max_segment_bytes=64 * 1024) as store:
        data = disk / "data"
        while os.path.getsize(data / "index.sqlite-wal") < 12 * 1024 * 1024:
            store.write(events(100))
        ballast = disk / "ballast"
        with filling:
            ballast_size = fill(ballast)
        with pytest.raises(StorageError):
            store.write(events(50))
        after_fill = tried["n"]
        # the indexer's checkpoints meanwhile: refused, no room
        wait_until(lambda: tried["n"] >= after_fill + 2, timeout=30)
        short = past_the_end(data)
        os.truncate(ballast, ballast_size - 8 * 1024 * 1024)
        wait_until(lambda: past_the_end(data) <= 0, timeout=30)
        for _ in range(20):
            store.write(events(50))
    assert short > 1024 * 1024


def start_on_a_full_disk(collector: Collector) -> str:
    """Start the collector on the full disk. It opens its store in the room of its
    released reserve and starts; with no reserve left (or not room enough), it says it
    waits for free space and stays up, to start by itself once there is some; either
    way without a traceback. (Before, it exited: "disk I/O error", or "free space on
    its disk and start again".)"""
    ready = collector.spawn()
    wait_for(lambda: ready.is_set() or WAITING in "".join(collector.output), 60,
             "the collector to start or to say it waits for free space")
    if collector.ready_line:
        return "started"
    log = "".join(collector.output)
    if collector.alive and WAITING in log and "Traceback" not in log:
        return "waiting"
    return log[-3000:]
