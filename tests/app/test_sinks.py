"""Sinks: the JSON-lines file sink, the background queue, counters, fork safety."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import orjson
import pytest

from audit_middleware import AuditError, JsonlFileSink, configure, emit, stats
from audit_middleware.event import AuditEvent
from audit_middleware.sinks.batching import BatchingQueue
from audit_middleware.testing import capture_audit_events, reset_configuration


@pytest.fixture(autouse=True)
def _reset() -> None:
    yield
    reset_configuration()


def read_records(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_file_sink_writes_one_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "events.jsonl"
    sink = JsonlFileSink(path)
    configure(sink=sink)
    ids = [emit("team_created", f"t{i}", status="line\nbreak").id for i in range(1000)]
    assert sink.flush(timeout=5)
    assert [r["id"] for r in read_records(path)] == ids
    assert stats() == {"submitted": 1000, "queued": 0, "failed": 0, "dropped": 0,
                       "delivered": 1000}
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o750"
    sink.close()


def test_many_threads_emitting_exact_total(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    configure(sink=JsonlFileSink(path, max_queue=100_000))

    def work(n: int) -> None:
        for i in range(500):
            emit("run_status_changed", f"r{n}-{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    configure(sink=None)  # closes (and so flushes) the file sink
    targets = [r["target"] for r in read_records(path)]
    assert len(targets) == len(set(targets)) == 4000


def test_close_flushes_and_later_submit_is_an_error(tmp_path: Path) -> None:
    sink = JsonlFileSink(tmp_path / "e.jsonl")
    configure(sink=sink)
    emit("team_created", "t1")
    sink.close()
    assert len(read_records(tmp_path / "e.jsonl")) == 1
    with pytest.raises(AuditError, match="closed"):
        emit("team_created", "t2")


def test_full_queue_drops_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    exported: list[int] = []

    def slow_export(batch: list[AuditEvent]) -> None:
        gate.wait(5)
        exported.append(len(batch))

    queue = BatchingQueue(slow_export, max_queue=10, max_batch=1, max_delay=0.01)
    with capture_audit_events():
        events = [emit("team_created", str(i)) for i in range(50)]
    accepted = [queue.submit(e) for e in events]
    gate.set()
    assert queue.flush(timeout=5)
    counts = queue.counts()
    assert counts["dropped"] == accepted.count(False) > 0
    assert sum(exported) == accepted.count(True)
    assert counts["submitted"] == 50
    assert "audit queue audit-sink full" in caplog.text


def test_export_errors_are_counted_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken(batch: list[AuditEvent]) -> None:
        raise OSError("disk on fire")

    queue = BatchingQueue(broken, max_delay=0.01)
    with capture_audit_events():
        event = emit("team_created", "t1")
    queue.submit(event)
    assert queue.flush(timeout=5)
    assert queue.counts()["failed"] == 1
    assert "failed to deliver 1 events" in caplog.text


def test_partial_write_is_truncated_away(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "e.jsonl"
    sink = JsonlFileSink(path, fsync=False)
    configure(sink=sink)
    emit("team_created", "kept")
    assert sink.flush(5)
    real_write = os.write
    failed = []

    def half_then_enospc_once(fd: int, data: bytes) -> int:
        if failed:
            return real_write(fd, data)
        if len(data) > 10:
            return real_write(fd, bytes(data[:10]))
        failed.append(True)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc_once)
    emit("team_created", "retried")  # written whole by the retry, after the truncate
    assert sink.flush(5)
    monkeypatch.undo()
    assert [r["target"] for r in read_records(path)] == ["kept", "retried"]
    assert sink.stats()["failed"] == 0


def test_forked_child_never_resends_the_parents_buffer(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    gate = threading.Event()
    written: list[str] = []

    def export(batch: list[AuditEvent]) -> None:
        gate.wait(5)
        with open(path, "a") as f:
            for e in batch:
                f.write(f"{os.getpid()} {e.target}\n")
        written.extend(e.target for e in batch)

    queue = BatchingQueue(export, max_delay=0.01)
    with capture_audit_events():
        parent_events = [emit("team_created", f"parent-{i}") for i in range(5)]
        child_event = emit("team_created", "child-0")
    for e in parent_events:
        queue.submit(e)
    time.sleep(0.05)  # the worker now holds or waits on the parent's batch
    pid = os.fork()
    if pid == 0:  # child: only its own event may be exported
        try:
            gate.set()
            queue.submit(child_event)
            queue.flush(timeout=5)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    gate.set()
    assert queue.flush(timeout=5)
    lines = path.read_text().splitlines()
    child_lines = [line for line in lines if not line.startswith(f"{os.getpid()} ")]
    assert [line.split()[1] for line in child_lines] == ["child-0"]
    assert sorted(written) == sorted(e.target for e in parent_events)


def test_configure_refuses_a_non_sink() -> None:
    from audit_middleware import AuditConfigurationError

    with pytest.raises(AuditConfigurationError, match="not a sink"):
        configure(sink=print)  # type: ignore[arg-type]


def test_configure_refuses_a_sink_class_for_an_instance() -> None:
    """A class has the methods too: accepted, every emit failed, and the next
    configure() crashed closing it."""
    from audit_middleware import AuditConfigurationError
    from audit_middleware.sinks.memory import MemorySink

    with pytest.raises(AuditConfigurationError, match="pass an instance, e.g. MemorySink()"):
        configure(sink=MemorySink)  # type: ignore[arg-type]


def test_emit_without_a_sink_says_how_to_configure() -> None:
    from audit_middleware import AuditConfigurationError

    with pytest.raises(AuditConfigurationError, match="configure"):
        emit("team_created", "t1")


def test_the_emitted_count_never_lags_returned_emits_nor_goes_down() -> None:
    """``submitted`` is derived (drained + queued + dropped): the worker popped up to a
    batch of items before counting them drained, and a read in between missed them all
    (thousands behind the emits already returned, and lower than the read before: a
    counter reset to a metrics scrape). A short GIL switch interval makes the
    interleaving frequent; the race is the same without it (a review helper)."""
    import sys

    from audit_middleware.sinks.batching import BatchingQueue

    def slow_export(batch: list[int]) -> None:
        time.sleep(0.001)

    queue: BatchingQueue[int] = BatchingQueue(slow_export, max_queue=100_000, max_batch=4096,
                                              max_delay=0.001, name="count-test")
    returned, stop = [0], threading.Event()
    problems: list[str] = []

    def reader() -> None:
        last = 0
        while not stop.is_set():
            before = returned[0]
            seen = queue.counts()["submitted"]
            if seen < before:
                problems.append(f"{seen} counted after {before} returned")
            if seen < last:
                problems.append(f"{seen} after {last}")
            last = seen

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40_000):
            queue.submit(i)
            returned[0] += 1
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
        queue.close(timeout=5)
    assert problems[:3] == []


def test_a_counter_reset_in_a_forked_child_never_waits_on_the_parents_lock() -> None:
    """The after-fork hooks reset every counter. A counter whose lock another thread of
    the parent held at the fork kept it held in the child for good, and the reset waited
    on it: the forked worker hung before serving a request."""
    from audit_middleware._counter import Counter

    counter = Counter()
    counter.add(5)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with counter._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    try:
        pid = os.fork()
        if pid == 0:  # the child: one thread, the old lock held by nobody alive
            counter.reset()
            counter.add()
            os._exit(0 if counter.value == 1 else 1)
        deadline = time.monotonic() + 10
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise AssertionError("the child hung in Counter.reset()")
            time.sleep(0.02)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        holder.join()
