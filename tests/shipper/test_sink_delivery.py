"""CollectorSink delivering to a collector that is up: events acknowledged and numbered
per source, batches split to the collector's frame limit, events it rejects counted, and
no event lost or doubled by many threads."""

from __future__ import annotations

import itertools
import logging
import sys
import threading
from typing import Any

import pytest

from audit_middleware import configure, emit
from audit_middleware.sinks import batching
from tests.e2e.harness import stored_events
from tests.shipper.sink_helpers import Collector, SinkFactory, emit_many


def test_events_are_acknowledged_by_the_collector(collector: Collector,
                                                  make_sink: SinkFactory) -> None:
    collector.start()
    sink = make_sink()
    ids = emit_many(500)
    assert sink.flush(timeout=10)
    assert sink.stats() == {
        "submitted": 500, "emitted": 500, "delivered": 500, "acknowledged": 500,
        "spooled": 0, "replayed": 0, "dropped": 0, "retried": 0, "rejected": 0,
        "queued": 0, "spool_bytes": 0, "spool_corrupt_bytes": 0, "spool_unusable": 0,
        "spool_unread_files": 0,
    }
    assert collector.ids() == ids  # one source, one connection: stored in emit order


def test_events_are_numbered_per_source(collector: Collector, make_sink: SinkFactory) -> None:
    """Each batch names its source, numbers its events and says how far the source has
    numbered (at least its own numbers, at most what was emitted)."""
    seen: list[tuple[str, list[int], int]] = []
    store_submit = None

    collector.start()
    store_submit = collector.store.submit_encoded

    def spy(encoded: Any, source: str = "", source_seqs: Any = None,
            numbered: int = 0) -> Any:
        seen.append((source, list(source_seqs), numbered))
        return store_submit(encoded, source, source_seqs, numbered)

    collector.store.submit_encoded = spy
    sink = make_sink()
    emit_many(30)
    assert sink.flush(timeout=10)
    assert {source for source, _, _ in seen} == {sink.source}
    assert [seq for _, seqs, _ in seen for seq in seqs] == list(range(1, 31))
    assert all(max(seqs) <= numbered <= 30 for _, seqs, numbered in seen)
    assert seen[-1][2] == 30


GUARD = 30.0  # seconds: only so that a broken build fails instead of hanging the suite


class _Contended:
    """``batching._FORK_LOCK`` as it is, that says when a thread has to wait for it."""

    def __init__(self, waiting: threading.Event) -> None:
        self._lock = threading.Lock()
        self._waiting = waiting

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            self._waiting.set()
            self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_a_thread_that_finds_the_fork_during_the_reset_numbers_as_the_new_source(
        make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """uWSGI (no at-fork hook), two requests at once in a new worker: the first thread
    to find the fork reset the queue, then the sink. The second, in between, found the
    queue's process id already this one's and numbered its event with the parent's
    counter (4, after the parent's 3), which the reset then restarted: the child's
    source sent 4, then 1, 2, 3, 4 again. Now it waits for the whole reset."""
    sink = make_sink(max_delay=60)  # nothing sent during the test: the queue shows all
    emit_many(3, "parent")
    sink._watch_pid = sink._queue.watch_pid = True
    sink._queue._pid = -1  # this process is now a child forked without the hook
    progress = threading.Event()  # the second thread's event numbered, or it waits
    monkeypatch.setattr(batching, "_FORK_LOCK", _Contended(progress))
    second = threading.Thread(target=lambda: (emit("team_created", "second"), progress.set()))
    reset_sender = sink._sender.after_fork

    def reset_with_another_request() -> None:
        second.start()
        assert progress.wait(GUARD)
        reset_sender()

    monkeypatch.setattr(sink._sender, "after_fork", reset_with_another_request)
    emit("team_created", "first")
    second.join(GUARD)
    assert not second.is_alive()
    assert sorted(item[0] for item in sink._queue._queue) == [1, 2]  # type: ignore[index]


def test_numbered_says_nothing_where_the_counter_cannot_show_its_value(
        make_sink: SinkFactory) -> None:
    sink = make_sink()
    emit_many(3)
    assert sink.numbered() == 3
    # CPython's itertools.count shows "count(<NULL>)" at sys.maxsize (gh-126618): no
    # number is better than a batch lost to a ValueError.
    sink._seq = itertools.count(sys.maxsize)
    assert sink.numbered() in (0, sys.maxsize - 1)


@pytest.mark.parametrize("host", ["\u00e4rzte-app", "_build", "-x", ".", "\u00e4\u00f6\u00fc"])
def test_the_source_id_is_valid_whatever_the_host_is_called(
        collector: Collector, make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch,
        host: str) -> None:
    """A source must start with a letter or digit: a host named 'ärzte-app' gave
    '-rzte-app:...', the collector refused the hello, and every event was lost."""
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: host)
    collector.start()
    sink = make_sink()
    ids = emit_many(5)
    assert sink.wait_for_delivery(timeout=10)
    assert collector.ids() == ids


def test_a_field_of_lone_surrogates_stays_within_the_cap_and_is_stored(
        collector: Collector, make_sink: SinkFactory) -> None:
    """A lone surrogate (a JSON ``\\udcff`` a client sent, os.fsdecode of bad bytes) is
    written as its six-character escape: a field capped at 800 characters became 4,800,
    the collector refused the event, and the action went unrecorded (an app-side
    security review). The escaped field is capped again."""
    collector.start()
    sink = make_sink()
    emit("team_created", "t-" + "\udcff" * 800)
    assert sink.wait_for_delivery(timeout=20)
    assert sink.stats()["rejected"] == 0
    (stored,) = stored_events(collector.data_dir)
    assert stored["target"].startswith("t-\\udcff") and stored["target"].endswith("[truncated]")
    assert len(stored["target"]) <= 1024


def test_events_the_collector_rejects_are_counted_with_the_reason_logged(
        collector: Collector, make_sink: SinkFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    collector.start(max_field_length=100)
    sink = make_sink()
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        emit("team_created", "short")
        emit("team_created", "x" * 101)
        assert sink.flush(timeout=10)
    stats = sink.stats()
    assert (stats["acknowledged"], stats["rejected"]) == (1, 1)
    assert "over the cap of 100" in caplog.text


def test_batches_are_split_to_fit_the_collectors_frame_limit(collector: Collector,
                                                             make_sink: SinkFactory) -> None:
    server = collector.start(max_frame=64 * 1024)
    sink = make_sink(batch_size=2000, max_delay=1.0)
    ids = [emit("team_created", f"{i}-" + "x" * 1000).id for i in range(300)]
    assert sink.flush(timeout=10)
    assert sink.stats()["acknowledged"] == 300
    assert server.stats()["batches"] >= 300 * 1000 // (64 * 1024)
    assert collector.ids() == ids


def test_an_event_larger_than_a_frame_is_rejected_locally(collector: Collector,
                                                          make_sink: SinkFactory) -> None:
    collector.start(max_frame=64 * 1024)
    sink = make_sink()
    configure(max_field_length=100_000)
    emit("team_created", "x" * 70_000)
    emit("team_created", "fits")
    assert sink.flush(timeout=10)
    stats = sink.stats()
    assert (stats["acknowledged"], stats["rejected"]) == (1, 1)


def test_many_threads_emitting_exact_total(collector: Collector,
                                           make_sink: SinkFactory) -> None:
    collector.start()
    sink = make_sink(max_queue=100_000)

    def work(n: int) -> None:
        emit_many(1000, f"thread{n}-")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sink.flush(timeout=20)
    ids = collector.ids()
    assert len(ids) == len(set(ids)) == 8000
    assert sink.stats()["acknowledged"] == 8000
