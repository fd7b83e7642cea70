"""CollectorSink against a real ingest server and Store on a real unix socket (run
in-process here; tests/e2e runs the collector as a subprocess): acknowledgements, the
spool while the collector is away, replay exactly once, counters for every loss."""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from audit_middleware import AuditConfigurationError, configure, emit
from audit_middleware.shipper import CollectorSink, spool_adoption
from audit_middleware.shipper.endpoint import is_loopback
from audit_middleware.shipper.receipts import pending
from audit_middleware.sinks import batching
from audit_middleware.testing import reset_configuration
from audit_middleware.wire import ErrorCode, ErrorReply, FrameType, parse_header
from collector.ingest import IngestSettings
from tests.e2e.harness import (
    InProcessCollector,
    RawClient,
    open_store,
    stored_events,
    wait_until,
)
from tests.environment import require_root
from tests.shipper.unaccepting import unaccepting_port


class Collector:
    """Start/stop an in-process collector on one socket path, keeping its data dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "c.sock"
        self.url = f"unix://{self.socket}"
        self.data_dir = root / "data"
        self.running: InProcessCollector | None = None
        self.store: Any = None

    def start(self, **settings: Any) -> InProcessCollector:
        self.store = open_store(self.data_dir)
        self.running = InProcessCollector(
            self.store, IngestSettings(socket_path=settings.pop("socket_path", self.socket),
                                       **settings))
        return self.running

    def stop(self) -> None:
        if self.running is not None:
            self.running.close()
            self.store.close()
            self.running = None

    def ids(self) -> list[str]:
        return [e["id"] for e in stored_events(self.data_dir)]


@pytest.fixture
def collector(root: Path) -> Iterator[Collector]:
    c = Collector(root)
    yield c
    c.stop()


SinkFactory = Callable[..., CollectorSink]


@pytest.fixture
def make_sink(root: Path, collector: Collector) -> Iterator[SinkFactory]:
    sinks: list[CollectorSink] = []

    def make(**options: Any) -> CollectorSink:
        options.setdefault("spool_dir", root / "spool")
        options.setdefault("backoff_max", 0.2)
        sink = CollectorSink(options.pop("url", collector.url), **options)
        sinks.append(sink)
        configure(sink=sink)
        return sink

    yield make
    reset_configuration()
    for sink in sinks:
        sink.close(timeout=5)


def emit_many(n: int, prefix: str = "t") -> list[str]:
    return [emit("team_created", f"{prefix}{i}").id for i in range(n)]


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


def test_while_the_collector_is_down_batches_are_spooled_then_replayed_once(
        collector: Collector, make_sink: SinkFactory) -> None:
    sink = make_sink()
    ids = emit_many(300)
    assert sink.flush(timeout=10)  # flushed to the spool: durable locally
    assert sink.stats()["spooled"] == 300
    assert sink.stats()["acknowledged"] == 0
    more = emit_many(200, "u")  # still down: appended after the first ones
    assert sink.flush(timeout=10)

    collector.start()
    assert sink.wait_for_delivery(timeout=20)
    stats = sink.stats()
    assert (stats["acknowledged"], stats["replayed"], stats["dropped"]) == (500, 500, 0)
    assert stats["retried"] >= 1 and stats["spool_bytes"] == 0
    assert collector.ids() == ids + more  # replayed in order, each exactly once


def test_after_the_spool_drains_events_go_directly_again(collector: Collector,
                                                         make_sink: SinkFactory) -> None:
    sink = make_sink()
    emit_many(10)
    assert sink.flush(timeout=10)
    collector.start()
    assert sink.wait_for_delivery(timeout=20)
    emit_many(10, "later")
    assert sink.flush(timeout=10)
    stats = sink.stats()
    assert (stats["acknowledged"], stats["replayed"], stats["spooled"]) == (20, 10, 10)


def test_a_collector_restart_loses_nothing(collector: Collector,
                                           make_sink: SinkFactory) -> None:
    collector.start()
    sink = make_sink()
    first = emit_many(100, "a")
    assert sink.flush(timeout=10)
    collector.stop()  # the sink's connection is now dead
    second = emit_many(100, "b")
    assert sink.flush(timeout=10)
    collector.start()
    third = emit_many(100, "c")
    assert sink.wait_for_delivery(timeout=20)
    assert collector.ids() == first + second + third
    assert sink.stats()["dropped"] == 0


def test_the_spool_of_an_earlier_process_is_replayed_at_start(
        collector: Collector, make_sink: SinkFactory) -> None:
    earlier = make_sink()
    ids = emit_many(50)
    earlier.close(timeout=5)  # the process "exits" with its events spooled
    collector.start()
    later = make_sink()
    assert later.wait_for_delivery(timeout=20)
    assert later.stats()["replayed"] == 50
    assert collector.ids() == ids


def test_a_backlog_adopted_a_part_at_a_time_is_replayed_whole_before_delivery_is_said(
        collector: Collector, make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan adopts ``ADOPT_MAX`` orphans at most: the rest must follow as soon as the
    spool is empty (not at the next scan, 10 s later), and ``wait_for_delivery`` must
    wait for them as for those adopted at start."""
    monkeypatch.setattr(spool_adoption, "ADOPT_MAX", 3)
    ids = []
    for n in range(10):  # ten processes exit with their events spooled, a file each
        earlier = make_sink()
        ids += emit_many(2, prefix=f"p{n}-")
        earlier.close(timeout=5)
    collector.start()
    later = make_sink()
    assert later.wait_for_delivery(timeout=20)
    assert sorted(collector.ids()) == sorted(ids)


def test_a_sink_of_another_collector_does_not_replay_a_shared_spool(
        root: Path, collector: Collector, make_sink: SinkFactory) -> None:
    """Two apps started in one directory share the default spool. Batches the first
    spooled for its collector (down) were replayed by the second into its own
    collector: events in another audit log, missing from their own."""
    other = Collector(root / "other")
    other.root.mkdir()
    other.start()
    try:
        first = make_sink()
        ids = emit_many(20, "first")
        first.close(timeout=5)  # its collector is down: all 20 spooled
        assert first.stats()["spooled"] == 20
        second = make_sink(url=other.url)
        own = emit_many(5, "second")
        assert second.wait_for_delivery(timeout=20)
        assert other.ids() == own  # only its own events, none of the first app's
        second.close(timeout=5)
        collector.start()
        again = make_sink()  # the first app's next start: its collector is back
        assert again.wait_for_delivery(timeout=20)
        assert collector.ids() == ids
    finally:
        other.stop()


def free_port(host: str) -> int:
    """A TCP port on ``host`` that nothing listens on now (a collector may bind it later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "LocalHost", "127.0.0.2", "::1"])
def test_loopback_however_it_is_spelled_needs_no_tls(host: str) -> None:
    """A host name is not case-sensitive: tcp://LOCALHOST:7100 was taken for a remote
    collector, and the sink refused to start without TLS."""
    assert is_loopback(host)
    url = f"tcp://[{host}]:7100" if ":" in host else f"tcp://{host}:7100"
    CollectorSink(url, token="t", spool_dir=None).close(timeout=1)


@pytest.mark.parametrize("host", ["localhost.", "LOCALHOST."])
def test_localhost_with_a_trailing_dot_needs_tls(host: str) -> None:
    """``localhost.`` is not looked up in /etc/hosts (glibc matches no trailing dot
    there) but asked of DNS: whatever address it answers would get the token and the
    events in clear. It was taken for loopback."""
    assert not is_loopback(host)
    with pytest.raises(AuditConfigurationError, match="is not on loopback"):
        CollectorSink(f"tcp://{host}:7100", token="t", spool_dir=None)


@pytest.mark.parametrize(("spelled", "options", "listen", "respelled"), [
    ("[0:0:0:0:0:0:0:1]", {}, "::1", "[::1]"),
    ("LOCALHOST.", {"tls": True}, "127.0.0.1", "localhost"),  # asked of DNS: not loopback
])
def test_a_collector_spelled_anew_replays_the_spool_of_its_old_spelling(
        collector: Collector, make_sink: SinkFactory, spelled: str, options: dict[str, Any],
        listen: str, respelled: str) -> None:
    """Spool files were tagged with the URL as spelled: a restart that spelled the same
    collector otherwise (a host name's case, a trailing dot, an IPv6 address written out)
    left every batch spooled before it on disk, unreplayed, as another collector's."""
    port = free_port(listen)
    first = make_sink(url=f"tcp://{spelled}:{port}", token="s3cret", **options)
    ids = emit_many(10)
    first.close(timeout=5)  # nothing listens: all 10 spooled
    assert first.stats()["spooled"] == 10
    collector.start(socket_path=None, tcp_host=listen, tcp_port=port, token="s3cret")
    again = make_sink(url=f"tcp://{respelled}:{port}", token="s3cret")
    assert again.wait_for_delivery(timeout=20)
    assert collector.ids() == ids


def test_a_corrupt_spool_record_loses_only_its_own_events_and_says_so(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A record whose checksum failed in the middle of a spool file discarded the rest
    of the file: its events and every later record's were lost, seen nowhere in
    stats(), and wait_for_delivery said True (a review helper). Replay now goes on at
    the next valid record; the corrupt one's bytes and events are counted and logged,
    and wait_for_delivery is False."""
    from audit_middleware.shipper.spool_files import SUFFIX
    from audit_middleware.shipper.spool_format import RECORD

    earlier = make_sink()
    batches = []
    for prefix in "abc":  # three batches, three records of one spool file
        batches.append(emit_many(10, prefix))
        assert earlier.flush(timeout=10)
    earlier.close(timeout=5)
    (path,) = (root / "spool").glob("*" + SUFFIX)
    data = bytearray(path.read_bytes())
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += RECORD.size + RECORD.unpack_from(data, pos)[0]
    assert len(offsets) == 3
    data[offsets[2] - 5] ^= 0x01  # inside the second record's last event line
    path.write_bytes(bytes(data))

    collector.start()
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        later = make_sink()
        assert later.wait_for_delivery(timeout=20) is False  # not everything arrived
    assert collector.ids() == batches[0] + batches[2]  # the third one too
    stats = later.stats()
    assert stats["spool_corrupt_bytes"] == offsets[2] - offsets[1]
    assert (stats["replayed"], stats["dropped"]) == (20, 10)
    assert "corrupt" in caplog.text and "10 events" in caplog.text
    assert later.wait_for_delivery(timeout=5) is True  # reported once


def test_a_spool_file_cut_short_does_not_stop_the_replay_of_the_ones_after_it(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A spool file cut to fewer bytes than a record header while it was being replayed
    (after its process adopted it, its size known): struct.error from the spool at every
    replay try, logged, and the sink stuck on that file for good: the next file's
    events were never delivered, and the loss was counted nowhere."""
    from audit_middleware.shipper.spool_files import SUFFIX

    cut = make_sink()  # one spool file of this sink's process
    emit_many(10, "a")
    assert cut.flush(timeout=10)
    cut.close(timeout=5)
    after = make_sink()  # and one of the next process's, newer
    later_ids = emit_many(10, "b")
    assert after.flush(timeout=10)
    after.close(timeout=5)
    oldest, _ = sorted((root / "spool").glob("*" + SUFFIX))
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        replaying = make_sink()  # adopts both (the collector is still down)
        size = oldest.stat().st_size
        os.truncate(oldest, 3)
        collector.start()
        wait_until(lambda: collector.ids() == later_ids, timeout=30,
                   message="the events of the spool file after the one cut short")
        assert replaying.wait_for_delivery(timeout=20) is False  # not all arrived
    stats = replaying.stats()
    assert (stats["spool_corrupt_bytes"], stats["spool_bytes"]) == (size, 0)
    assert (stats["replayed"], stats["dropped"]) == (10, 0)  # its header went with it
    assert "torn or corrupt" in caplog.text and "cut short" in caplog.text


def test_when_the_spool_is_full_events_are_dropped_counted_and_logged(
        make_sink: SinkFactory, caplog: pytest.LogCaptureFixture) -> None:
    sink = make_sink(spool_max_bytes=1000)
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        emit_many(50)
        assert sink.flush(timeout=10)
    stats = sink.stats()
    assert (stats["spooled"], stats["dropped"]) == (0, 50)
    assert "50 events dropped" in caplog.text and "spool" in caplog.text


def test_wait_for_delivery_is_false_when_events_were_dropped(make_sink: SinkFactory) -> None:
    """Drops since the previous call count, also those before this call began (the
    worker drains every max_delay: they are usually over by then)."""
    sink = make_sink(spool_max_bytes=100)  # no collector, no room: everything is dropped
    emit_many(20)
    assert sink.flush(timeout=10)
    assert sink.stats()["dropped"] == 20
    assert sink.wait_for_delivery(timeout=10) is False
    assert sink.wait_for_delivery(timeout=10) is True  # nothing submitted, nothing lost since


def test_a_timed_out_wait_for_delivery_does_not_use_up_the_drops(
        collector: Collector, make_sink: SinkFactory) -> None:
    """``while not wait_for_delivery(t)`` ended on True after an outage that dropped
    events: the timed-out call had moved the mark (a diff review)."""
    sink = make_sink(spool_max_bytes=1000)  # room for a batch or two, not for all
    for i in range(20):
        emit("team_created", f"t{i}")
        sink.flush(timeout=5)  # a batch each: some spooled, the rest dropped
    assert sink.stats()["dropped"] > 0 and sink.stats()["spooled"] > 0
    assert sink.wait_for_delivery(timeout=0.3) is False  # the spool waits: timed out
    collector.start()
    assert sink.wait_for_delivery(timeout=20) is False  # delivered, but drops since
    assert sink.wait_for_delivery(timeout=20) is True


def test_a_default_spool_that_cannot_be_made_is_said_not_fatal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The default spool_dir is relative to a working directory the app may not own (a
    container's root-owned WORKDIR): refused, the app would not start at all, though the
    spool matters only during an outage (a diff review). Logged instead; an explicit
    spool_dir is still refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "audit-spool").write_text("")  # where the default would go: a file
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        sink = CollectorSink("unix:///x.sock")
    assert "cannot be used" in caplog.text and "will be dropped" in caplog.text
    sink.close(timeout=0.1)
    with pytest.raises(AuditConfigurationError, match="cannot be used"):
        CollectorSink("unix:///x.sock", spool_dir=tmp_path / "audit-spool")


WORKER_UID = 65534  # nobody: the user a root master's workers drop to


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are 0700, closed to the worker's user.
    parent = Path(tempfile.mkdtemp(prefix="spool-uid-", dir="/tmp"))
    parent.chmod(0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def in_worker(work: Callable[[], object]) -> Any:
    """``work()`` in a child forked from this root process that then drops to
    ``WORKER_UID``, as gunicorn --preload --user's workers do (the app, and its sink,
    made in the root master): the at-fork hooks run as root, before the drop."""
    results_r, results_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(results_r)
            os.setgroups([])
            os.setgid(WORKER_UID)
            os.setuid(WORKER_UID)
            try:
                result = work()
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                result = f"{type(exc).__name__}: {exc}"
            os.write(results_w, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(results_w)
    with os.fdopen(results_r, "rb") as results:
        data = results.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


@pytest.fixture
def as_root() -> None:
    require_root("to switch users")


@pytest.mark.usefixtures("as_root")
@pytest.mark.parametrize("made", ["by the root master", "not yet, where only root can"])
def test_a_worker_that_drops_root_is_told_at_once_that_it_cannot_spool(
        open_tmp: Path, made: str, caplog: pytest.LogCaptureFixture) -> None:
    """gunicorn --preload --user app: the sink is made in the root master, the workers
    drop to app after the fork. Where app cannot make its spool (the spool directory
    root's and 0700, as the master made it; or not made yet, in a directory only root
    can write), nothing said so until the collector went away, and then every batch of
    the outage was dropped. Now checked for the worker's user at its first cycle and in
    stats(): said, with what to do, before any outage."""
    spool_dir = open_tmp / "spool"
    if made == "by the root master":
        spool_dir.mkdir(mode=0o700)
    else:
        open_tmp.chmod(0o711)  # the worker may pass through, not make anything there
    sink = CollectorSink(f"unix://{open_tmp}/no-collector.sock", spool_dir=spool_dir)
    try:
        root_unusable = sink.stats().get("spool_unusable")

        def worker() -> object:
            with caplog.at_level(logging.ERROR, "audit_middleware"):
                unusable = sink.stats().get("spool_unusable")
            return unusable, [r.getMessage() for r in caplog.records]

        unusable, said = in_worker(worker)
    finally:
        sink.close(timeout=1)
    assert [m for m in said if f"runs as uid {WORKER_UID}" in m and "will be dropped" in m
            and f"install -d -o USER -m 0700 {spool_dir}" in m
            and f"install -d -m 1733 {spool_dir}" in m], said
    assert (unusable, root_unusable) == (1, 0)  # root can spool there


@pytest.mark.usefixtures("as_root")
def test_a_worker_spools_in_its_own_subdirectory_of_a_root_directory_made_1733(
        open_tmp: Path) -> None:
    """What that error offers: a spool directory of root's, mode 1733 (others may make
    entries, not list or remove them). Each user spools in its private .uid-<uid>."""
    spool_dir = open_tmp / "spool"
    spool_dir.mkdir()
    spool_dir.chmod(0o1733)
    sink = CollectorSink(f"unix://{open_tmp}/no-collector.sock", spool_dir=spool_dir,
                         backoff_max=0.2)
    configure(sink=sink)
    try:
        def worker() -> object:
            emit_many(3)
            sink.flush(timeout=10)
            return {key: sink.stats()[key] for key in ("spooled", "dropped", "spool_unusable")}

        counts = in_worker(worker)
    finally:
        reset_configuration()
        sink.close(timeout=1)
    assert counts == {"spooled": 3, "dropped": 0, "spool_unusable": 0}
    private = spool_dir / f".uid-{WORKER_UID}"
    st = private.stat()
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (WORKER_UID, "0o700")
    assert len(list(private.glob("*.spool"))) == 1


def test_any_failure_to_connect_spools_the_batch(collector: Collector, make_sink: SinkFactory,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Only OSError and WireError were taken for a failed connection: anything else
    (a UnicodeError from the IDNA codec, a hello that cannot be encoded) escaped and the
    queue counted the whole batch failed, every batch, none spooled."""
    from audit_middleware.shipper import connection

    def broken_connect(self: object) -> None:
        raise UnicodeError("label empty or too long")

    monkeypatch.setattr(connection.Connection, "connect", broken_connect)
    sink = make_sink()
    ids = emit_many(30)
    assert sink.flush(timeout=10)
    assert (sink.stats()["spooled"], sink.stats()["dropped"]) == (30, 0)
    monkeypatch.undo()
    collector.start()
    assert sink.wait_for_delivery(timeout=20)
    assert collector.ids() == ids


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


def test_without_a_spool_undeliverable_events_are_counted_as_dropped_at_close(
        make_sink: SinkFactory) -> None:
    sink = make_sink(spool_dir=None)
    emit_many(20)
    sink.close(timeout=0.5)
    assert sink.stats()["dropped"] == 20


def test_without_a_spool_events_wait_in_memory_for_the_collector(
        collector: Collector, make_sink: SinkFactory) -> None:
    sink = make_sink(spool_dir=None)
    ids = emit_many(20)
    sink.flush(timeout=0.3)  # cannot finish: the collector is not there
    collector.start()
    assert sink.wait_for_delivery(timeout=20)
    assert collector.ids() == ids


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


# -- TCP -------------------------------------------------------------------------------------
def test_tcp_with_the_token_delivers(collector: Collector, make_sink: SinkFactory) -> None:
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret")
    sink = make_sink(url=f"tcp://127.0.0.1:{server.server.tcp_port()}", token="s3cret")
    ids = emit_many(10)
    assert sink.flush(timeout=10)
    assert collector.ids() == ids


def test_a_tcp_connection_the_collector_closed_as_idle_is_not_taken_for_an_outage(
        collector: Collector, make_sink: SinkFactory) -> None:
    """The collector closes an idle connection with a ``timeout`` error frame. Over TCP
    the next batch's send still succeeds, and that frame is read as its reply: the
    batch was spooled, counted as retried, and a fail_closed request answered 503,
    after every pause longer than idle_timeout (300 s by default)."""
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret",
                             idle_timeout=0.3)
    sink = make_sink(url=f"tcp://127.0.0.1:{server.server.tcp_port()}", token="s3cret",
                     fail_closed=True)
    ids = emit_many(3)
    assert sink.flush(timeout=10)
    time.sleep(1.0)  # the collector closes the idle connection
    receipts: list[Any] = []
    token = pending.set(receipts)
    try:
        ids += emit_many(3, "u")
    finally:
        pending.reset(token)
    assert [r.result(timeout=10) for r in receipts] == [None, None, None]
    assert sink.flush(timeout=10)
    stats = sink.stats()
    assert (stats["acknowledged"], stats["spooled"], stats["retried"]) == (6, 0, 0)
    assert collector.ids() == ids


class HungResolver:
    """``socket.getaddrinfo`` for ``localhost`` that answers only once released (or after
    60 s): a resolver that does not answer. Other names resolve as usual."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from audit_middleware.shipper import endpoint

        self.release = threading.Event()
        self.hanging = True  # False: it answers at once, until this is set again
        self.calls = 0
        real = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host == "localhost":
                self.calls += 1
                if self.hanging:
                    self.release.wait(60)
                host = "127.0.0.1"
            return real(host, port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        # No answer left from an earlier test, no lookup of one still under way.
        monkeypatch.setattr(endpoint, "_answers", {}, raising=False)
        monkeypatch.setattr(endpoint, "_lookups", {}, raising=False)


@pytest.fixture
def hung_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[HungResolver]:
    resolver = HungResolver(monkeypatch)
    yield resolver
    resolver.release.set()  # a worker or lookup thread still waiting goes on
    for thread in threading.enumerate():
        if thread.name.startswith("audit-resolve:"):
            thread.join(5)


def test_a_resolver_that_does_not_answer_is_given_up_at_connect_timeout(
        collector: Collector, make_sink: SinkFactory, hung_resolver: HungResolver) -> None:
    """getaddrinfo had no timeout: neither connect_timeout nor any deadline bounded it,
    and the worker waited for as long as the resolver liked, the queue filling behind it
    (a review helper). The lookup now runs in a thread of its own, waited for within
    connect_timeout: then the connection failed, the batch is spooled, and the next
    attempts wait for the same lookup rather than starting more."""
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret")
    sink = make_sink(url=f"tcp://localhost:{server.server.tcp_port()}", token="s3cret",
                     connect_timeout=0.3)
    ids = emit_many(10)
    started = time.monotonic()
    assert sink.flush(timeout=5)
    assert time.monotonic() - started < 2.0  # about connect_timeout, not the resolver's hang
    stats = sink.stats()
    assert (stats["spooled"], stats["dropped"], stats["acknowledged"]) == (10, 0, 0)
    assert stats["retried"] >= 1
    time.sleep(1.0)  # retried meanwhile (backoff_max 0.2 s)
    assert sink.stats()["retried"] >= 2
    assert hung_resolver.calls == 1  # one lookup under way, not one per retry
    hung_resolver.release.set()  # the resolver answers at last
    assert sink.wait_for_delivery(timeout=20)
    assert collector.ids() == ids


def test_a_resolver_that_does_not_answer_does_not_hold_the_exit_deadline(
        collector: Collector, make_sink: SinkFactory, hung_resolver: HungResolver) -> None:
    """close() (atexit) with the worker waiting for a resolver: the lookup's wait ends at
    the exit deadline, and the batch is spooled before close returns, not left with a
    thread that is given up on (its events neither spooled nor counted)."""
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret")
    sink = make_sink(url=f"tcp://localhost:{server.server.tcp_port()}", token="s3cret",
                     connect_timeout=30.0)
    emit_many(10)
    time.sleep(0.5)  # the worker is waiting for the resolver (within connect_timeout)
    started = time.monotonic()
    sink.close(timeout=1.0)
    assert time.monotonic() - started < 1.8  # the deadline (1 s), the spool write after it
    stats = sink.stats()
    assert (stats["spooled"], stats["dropped"], stats["acknowledged"]) == (10, 0, 0)


def test_while_the_resolver_hangs_a_reconnect_uses_the_last_answer_at_once(
        collector: Collector, make_sink: SinkFactory, hung_resolver: HungResolver) -> None:
    """Each reconnect while the resolver did not answer waited for it the whole
    connect_timeout before using the addresses it last gave: batches waited, and a
    fail_closed request was answered 503 although the collector was reachable at once
    (a review). The last answer is now used after a short wait for a new lookup, and
    at once while one is still under way."""
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret",
                             idle_timeout=0.3)
    sink = make_sink(url=f"tcp://localhost:{server.server.tcp_port()}", token="s3cret",
                     connect_timeout=30.0, fail_closed=True)
    hung_resolver.hanging = False
    ids = emit_many(3)
    assert sink.flush(timeout=10)  # resolved: the answer is kept
    hung_resolver.hanging = True
    for round_ in ("u", "v"):  # a new lookup that hangs, then the same one still under way
        time.sleep(1.0)  # the collector closes the idle connection
        receipts: list[Any] = []
        token = pending.set(receipts)
        try:
            ids += emit_many(3, round_)
        finally:
            pending.reset(token)
        assert [r.result(timeout=10) for r in receipts] == [None, None, None]
    assert sink.flush(timeout=10)
    stats = sink.stats()
    assert (stats["acknowledged"], stats["spooled"], stats["retried"]) == (9, 0, 0)
    assert hung_resolver.calls == 2  # the one that answered, the one still hanging
    assert collector.ids() == ids


@pytest.mark.parametrize("shutdown", ["close", "drain"])
def test_a_connect_that_hangs_does_not_hold_the_exit_deadline(
        make_sink: SinkFactory, shutdown: str) -> None:
    """close() (atexit) or drain() (ASGI lifespan) starting while the worker waited for
    a TCP connect that does not complete: the connect went on for the whole
    connect_timeout, the deadline set meanwhile unheeded, so the batch was neither
    spooled nor counted when the worker was given up on. It ends at the deadline now."""
    with unaccepting_port() as port:
        sink = make_sink(url=f"tcp://127.0.0.1:{port}", token="s3cret", connect_timeout=30.0)
        emit_many(10)
        wait_until(lambda: sink._sender._opening is not None, 10, "the worker connecting")
        if shutdown == "close":
            sink.close(timeout=1.0)
        else:
            assert sink.drain(timeout=1.0)
        stats = sink.stats()
    assert (stats["spooled"], stats["dropped"], stats["acknowledged"]) == (10, 0, 0)


def test_tcp_with_a_wrong_token_is_refused_and_spooled(
        collector: Collector, make_sink: SinkFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret")
    sink = make_sink(url=f"tcp://127.0.0.1:{server.server.tcp_port()}", token="guess")
    with caplog.at_level(logging.WARNING, "audit_middleware"):
        emit_many(10)
        assert sink.flush(timeout=10)
    assert (sink.stats()["acknowledged"], sink.stats()["spooled"]) == (0, 10)
    assert "unauthorized" in caplog.text
    assert collector.ids() == []


@pytest.mark.parametrize(("url", "options", "message"), [
    ("tcp://127.0.0.1:7100", {}, "needs token="),
    ("tcp://collector.internal:7100", {"token": "t"}, "pass tls=True"),
    ("http://collector:80", {}, "is not supported"),
    ("tcp://collector", {"token": "t"}, "needs a host and a port"),
    ("unix://", {}, "needs the socket file's path"),
    ("unix:///", {}, "needs the socket file's path"),
    ("unix:///x\x00.sock", {}, "needs the socket file's path"),
    ("tcp://127.0.0.1: 7100", {"token": "t"}, "needs a host and a port"),
    ("tcp://127.0.0.1:+7100", {"token": "t"}, "needs a host and a port"),
    ("tcp://127.0.0.1:7_100", {"token": "t"}, "needs a host and a port"),
    ("tcp://127.0.0.1:\u0667\u0661\u0660\u0660", {"token": "t"}, "needs a host and a port"),
    ("unix:///x.sock", {"max_queue": 0}, "max_queue must be a positive int"),
    ("unix:///x.sock", {"ack_timeout": 0}, "ack_timeout must be a number of seconds"),
    # Each of these was accepted, then failed when used: at exit the queue was lost
    # (exit_timeout), every batch dropped (connect_timeout NaN), or every request 503'd.
    ("unix:///x.sock", {"exit_timeout": "5"}, "exit_timeout must be a number of seconds"),
    ("unix:///x.sock", {"exit_timeout": float("nan")}, "exit_timeout must be"),
    ("unix:///x.sock", {"connect_timeout": float("nan")}, "connect_timeout must be"),
    ("unix:///x.sock", {"ack_timeout": float("inf")}, "ack_timeout must be"),
    ("unix:///x.sock", {"max_delay": True}, "max_delay must be"),
    ("unix:///x.sock", {"fail_closed_timeout": float("nan")}, "fail_closed_timeout must"),
    ("unix:///x.sock", {"fail_closed": "no"}, "fail_closed must be True or False"),
    ("unix:///x.sock", {"tls": "yes"}, "tls must be True or False"),
    ("unix:///x.sock", {"max_queue": True}, "max_queue must be a positive int"),
    ("tcp://h.example:7100", {"token": "t", "tls": True, "tls_ca": "/nonexistent-ca.pem"},
     "tls_ca='/nonexistent-ca.pem' cannot be used as the CA bundle"),
    # Each failed only at the first connection, with an error that is not a connection
    # failure, and every batch was dropped rather than spooled (a review helper).
    ("tcp://collector..internal:7100", {"token": "t", "tls": True},
     "is not a valid host name"),
    ("tcp://127.0.0.1:7100", {"token": "t\udcff"}, "token must be text that UTF-8 can carry"),
])
def test_bad_configuration_fails_at_construction(url: str, options: dict[str, Any],
                                                 message: str) -> None:
    with pytest.raises(AuditConfigurationError, match=message):
        CollectorSink(url, **options)


def test_a_spool_directory_that_can_never_be_made_is_refused_at_construction(
        tmp_path: Path) -> None:
    """The spool is made when first needed, when the collector is away: a place where
    it can never be made (under a file, a read-only mount) dropped every event of the
    outage, and flush() said True (a new-user review)."""
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("")
    with pytest.raises(AuditConfigurationError, match="is not a directory this process can "
                                                       "write to"):
        CollectorSink("unix:///x.sock", spool_dir=a_file / "spool")
    sink = CollectorSink("unix:///x.sock", spool_dir=tmp_path / "new" / "spool")
    assert not (tmp_path / "new").exists()  # still made only when needed
    sink.close(timeout=0.1)


def test_a_relative_unix_path_is_resolved_at_construction(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.chdir(tmp_path)
    sink = CollectorSink(spool_dir=None)
    assert str(sink.endpoint) == f"unix://{tmp_path}/audit-data/collector.sock"
    sink.close()


def self_signed_certificate(directory: Path, **flaws: Any) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files (cert, key); ``flaws`` make
    it one a client refuses for a reason other than trust (see ``_certificate``)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate("audit-collector test", key, key, "audit-collector test", ca=True,
                        **flaws)
    return _write_pem(directory, "cert.pem", cert), _write_key(directory, "key.pem", key)


def ca_issued_certificate(directory: Path, *, authority_key_identifier: bool = True
                          ) -> tuple[Path, Path, Path]:
    """A test CA and a certificate it issued for 127.0.0.1, as PEM files (ca, cert, key);
    without ``authority_key_identifier`` the certificate breaks RFC 5280 (4.2.1.1)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("audit test CA", ca_key, ca_key, "audit test CA", ca=True)
    cert = _certificate("audit-collector test", key, ca_key, "audit test CA", ca=False,
                        authority_key_identifier=authority_key_identifier)
    return (_write_pem(directory, "ca.pem", ca), _write_pem(directory, "cert.pem", cert),
            _write_key(directory, "key.pem", key))


def _certificate(subject: str, key: Any, issuer_key: Any, issuer: str, *, ca: bool,
                 authority_key_identifier: bool = False, starts_in: float = -300,
                 ends_in: float = 3600, address: str = "127.0.0.1",
                 client_only: bool = False) -> Any:
    """A certificate for ``address``, valid from ``starts_in`` to ``ends_in`` seconds
    from now; with ``client_only``, for TLS clients only (extended key usage). A CA's
    has the extensions RFC 5280 asks of one (Python 3.13's default verification checks
    them)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(seconds=starts_in))
        .not_valid_after(now + datetime.timedelta(seconds=ends_in))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    if authority_key_identifier:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
    if client_only:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pem(directory: Path, name: str, cert: Any) -> Path:
    from cryptography.hazmat.primitives import serialization

    path = directory / name
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(directory: Path, name: str, key: Any) -> Path:
    from cryptography.hazmat.primitives import serialization

    path = directory / name
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def tls_sink(collector: Collector, make_sink: SinkFactory, cert: Path, key: Path, *,
             host: str = "127.0.0.1", **options: Any) -> CollectorSink:
    """A sink of the collector started on TCP with TLS (``cert``, ``key``) and the token,
    reached at ``host``."""
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret",
                             tls_cert=cert, tls_key=key)
    return make_sink(url=f"tcp://{host}:{server.server.tcp_port()}", token="s3cret",
                     **options)


def test_tls_with_the_token_delivers(collector: Collector, make_sink: SinkFactory,
                                     root: Path) -> None:
    cert, key = self_signed_certificate(root)
    sink = tls_sink(collector, make_sink, cert, key, tls=True, tls_ca=cert)
    ids = emit_many(10)
    assert sink.flush(timeout=10)
    assert sink.stats()["acknowledged"] == 10
    assert collector.ids() == ids


def test_tls_refuses_a_collector_it_cannot_verify(collector: Collector,
                                                  make_sink: SinkFactory, root: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    cert, key = self_signed_certificate(root)
    sink = tls_sink(collector, make_sink, cert, key,
                    tls=True)  # no tls_ca: the self-signed certificate is not trusted
    with caplog.at_level(logging.WARNING):
        emit_many(3)
        assert sink.flush(timeout=10)
    assert (sink.stats()["acknowledged"], sink.stats()["spooled"]) == (0, 3)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert "pass tls_ca=" in caplog.text  # what to change, not only what failed
    # The collector's side says it too (asyncio's server logged it at debug level only).
    assert collector_says(caplog, "TLS handshake with 127.0.0.1:",
                          "does not trust the CA that issued this certificate")
    assert collector.running is not None
    assert collector.running.server.stats()["tls_handshake_failures"] >= 1


@pytest.mark.parametrize(("flaws", "host", "shipper_hint", "collector_hint"), [
    pytest.param({"starts_in": -7200, "ends_in": -3600}, "127.0.0.1",
                 "certificate has expired: renew it", "finds this certificate expired",
                 id="expired"),
    pytest.param({"starts_in": 3600, "ends_in": 7200}, "127.0.0.1",
                 "certificate is not valid yet: set this host's clock right",
                 "the alert does not say why", id="not-yet-valid"),
    pytest.param({}, "localhost", "does not hold the name or address used to reach it",
                 "the alert does not say why", id="host-name-mismatch"),
    pytest.param({"address": "127.0.0.2"}, "127.0.0.1",
                 "does not hold the name or address used to reach it",
                 "the alert does not say why", id="ip-address-mismatch"),
    pytest.param({"client_only": True}, "127.0.0.1", "is not one for a TLS server",
                 "not one for a TLS server", id="not-for-a-server"),
])
def test_a_certificate_refused_for_another_reason_than_trust_is_not_a_ca_problem(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture, flaws: dict[str, Any], host: str,
        shipper_hint: str, collector_hint: str) -> None:
    """The CA is given (tls_ca=), the certificate is wrong otherwise: the shipper said
    "not trusted here: pass tls_ca=" whatever the reason, and the collector "give it the
    CA" for a bad_certificate alert (nothing for an expired or unsupported one). Each
    side names what its end can tell now."""
    cert, key = self_signed_certificate(root, **flaws)
    sink = tls_sink(collector, make_sink, cert, key, host=host, tls=True, tls_ca=cert)
    with caplog.at_level(logging.WARNING):
        emit_many(1)
        assert sink.flush(timeout=10)
    assert sink.stats()["acknowledged"] == 0
    [said] = [r.getMessage() for r in caplog.records
              if r.name == "audit_middleware" and "unavailable" in r.getMessage()]
    assert "CERTIFICATE_VERIFY_FAILED" in said and shipper_hint in said, said
    assert "tls_ca" not in said, said
    assert collector_says(caplog, "TLS handshake with 127.0.0.1:", collector_hint)
    assert not collector_says(caplog, "give it the CA", timeout=0)


def test_a_certificate_of_another_ca_of_the_same_name_is_a_ca_problem(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """tls_ca is an older CA of the name that issued the collector's certificate (the CA
    made again): a certificate without an authority key identifier (what OpenSSL's own
    commands make) is matched to it by name, and its signature fails (verify code 7).
    The shipper said a CA setting does not change that, of the one setting that does;
    the collector's decrypt_error alert had no hint."""
    (root / "old").mkdir()
    (root / "new").mkdir()
    old_ca, _, _ = ca_issued_certificate(root / "old")
    _, cert, key = ca_issued_certificate(root / "new", authority_key_identifier=False)
    sink = tls_sink(collector, make_sink, cert, key, tls=True, tls_ca=old_ca)
    with caplog.at_level(logging.WARNING):
        emit_many(1)
        assert sink.flush(timeout=10)
    assert sink.stats()["acknowledged"] == 0
    [said] = [r.getMessage() for r in caplog.records
              if r.name == "audit_middleware" and "unavailable" in r.getMessage()]
    assert "certificate signature failure" in said, said  # the premise: code 7
    assert "that CA did not sign it" in said and "pass tls_ca=" in said, said
    assert "a CA setting does not change" not in said, said
    assert collector_says(caplog, "TLS handshake with 127.0.0.1:",
                          "not signed by the CA it trusts under its issuer's name")


def test_tls_ca_may_be_the_collectors_own_ca_issued_certificate(
        collector: Collector, make_sink: SinkFactory, root: Path) -> None:
    """tls_ca=<its certificate> (what the hint says) works for a CA-issued one on every
    Python: before, only 3.13 took it as a trust anchor, and 3.11/3.12 refused it."""
    _, cert, key = ca_issued_certificate(root)
    sink = tls_sink(collector, make_sink, cert, key, tls=True, tls_ca=cert)
    ids = emit_many(3)
    assert sink.flush(timeout=10)
    assert sink.stats()["acknowledged"] == 3
    assert collector.ids() == ids


def test_a_certificate_as_openssl_issues_it_is_trusted_on_every_python(
        collector: Collector, make_sink: SinkFactory, root: Path) -> None:
    """A CA-issued certificate without an authority key identifier (what `openssl x509
    -req` makes) was trusted on 3.11/3.12 and refused on 3.13 (its strict RFC 5280
    checks): upgrading Python stopped the shipping. Trusted alike now."""
    ca, cert, key = ca_issued_certificate(root, authority_key_identifier=False)
    sink = tls_sink(collector, make_sink, cert, key, tls=True, tls_ca=ca)
    ids = emit_many(3)
    assert sink.flush(timeout=10)
    assert sink.stats()["acknowledged"] == 3
    assert collector.ids() == ids


def test_a_plain_client_of_a_tls_listener_is_told_to_turn_tls_on(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """It logged only 'the collector closed the connection', an outage to look for."""
    cert, key = self_signed_certificate(root)
    sink = tls_sink(collector, make_sink, cert, key)
    with caplog.at_level(logging.WARNING):
        emit_many(3)
        assert sink.flush(timeout=10)
    assert sink.stats()["acknowledged"] == 0
    assert "pass tls=True" in caplog.text, caplog.text
    assert collector_says(caplog, "TLS handshake with 127.0.0.1:",
                          "speaking plain TCP to this TLS port")


def test_a_tls_client_of_a_plain_listener_is_named_on_both_ends(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The collector logged "unknown frame type 0: this server speaks protocol version
    1" of a ClientHello, an operator sent looking at versions."""
    cert, _ = self_signed_certificate(root)
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret")
    sink = make_sink(url=f"tcp://127.0.0.1:{server.server.tcp_port()}", token="s3cret",
                     tls=True, tls_ca=cert)
    with caplog.at_level(logging.WARNING):
        emit_many(1)
        assert sink.flush(timeout=10)
    assert sink.stats()["acknowledged"] == 0
    assert "does not answer in TLS on this port" in caplog.text, caplog.text
    assert collector_says(caplog, "127.0.0.1:", "the client speaks TLS to a port without it")


def collector_says(caplog: pytest.LogCaptureFixture, *parts: str,
                   timeout: float = 10.0) -> bool:
    """Whether the collector logs a line holding ``parts``, within ``timeout``: it logs
    from its own thread, which may still be at it when the shipper's flush returns."""
    def said() -> bool:
        return any(r.name == "collector.ingest" and all(p in r.getMessage() for p in parts)
                   for r in caplog.records)

    until = time.monotonic() + timeout
    while not said():
        if time.monotonic() > until:
            return False
        time.sleep(0.01)
    return True


def test_failed_tls_handshakes_are_logged_per_host_without_a_flood(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Silent clients (a port scanner, a client hung before its hello) time out in the
    handshake: each is counted, and a host's 1st, 2nd, 4th... failure logged. The
    listener serves a client that gets it right all the while."""
    import socket

    cert, key = self_signed_certificate(root)
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret",
                             tls_cert=cert, tls_key=key, handshake_timeout=0.3)
    port = server.server.tcp_port()
    assert port is not None
    with caplog.at_level(logging.WARNING, "collector.ingest"):
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
                assert silent.recv(1) == b""  # closed by the collector after its timeout
        sink = make_sink(url=f"tcp://127.0.0.1:{port}", token="s3cret", tls=True,
                         tls_ca=cert)
        ids = emit_many(5)
        assert sink.flush(timeout=10)
    assert collector.ids() == ids
    assert server.server.stats()["tls_handshake_failures"] == 5
    logged = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(logged) == 3, logged  # the 1st, 2nd and 4th
    assert all("said nothing in time" in m for m in logged), logged


def test_a_tcp_probe_of_the_tls_port_is_counted_apart_and_not_logged_as_a_failure(
        collector: Collector, root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A client that connects and closes without a word (a load balancer's TCP health
    check, a port probe) was a failed handshake: counted with the clients that fail TLS
    and logged as a warning, so a health check every few seconds read as a client in
    trouble. It is counted as a probe, at debug level only."""
    import socket

    cert, key = self_signed_certificate(root)
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret",
                             tls_cert=cert, tls_key=key)
    port = server.server.tcp_port()
    assert port is not None
    with caplog.at_level(logging.DEBUG, "collector.ingest"):
        for _ in range(3):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        deadline = time.monotonic() + 10
        while (server.server.stats().get("tls_probes", 0) < 3
               and time.monotonic() < deadline):
            time.sleep(0.02)
        # A client that does send a hello and then gives up still counts as a failure.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert plain.recv(1) == b""
        # Closed before the handshake's task counts and logs it: its warning, the last
        # thing the collector's thread does of it, waited for (its count comes first).
        assert collector_says(caplog, "TLS handshake with", "failed")
    stats = server.server.stats()
    assert stats["tls_probes"] == 3 and stats["tls_handshake_failures"] == 1, stats
    warned = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.WARNING and "TLS" in r.getMessage()]
    assert len(warned) == 1 and "plain TCP" in warned[0], warned
    assert collector_says(caplog, "closed the connection before its TLS hello")


def test_unfinished_tls_handshakes_count_against_max_connections(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Before, a TLS handshake under way was not counted against max_connections: any
    number of silent connections held a file each until handshake_timeout. Now they
    count, the oldest is closed at once to make room for a new connection, and a
    shipper that speaks gets in (the newest silent one stays: within the limit)."""
    cert, key = self_signed_certificate(root)
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret",
                             tls_cert=cert, tls_key=key, max_connections=2,
                             handshake_timeout=60.0)
    port = server.server.tcp_port()
    assert port is not None
    with caplog.at_level(logging.WARNING, "collector.ingest"):
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5)
                  for _ in range(3)]
        try:
            assert silent[0].recv(1) == b""  # closed (by the third) long before 60 s
            wait_until(lambda: server.server.stats()["tls_handshakes_pending"] == 2, 10,
                       "the two newest handshakes under way")
            sink = make_sink(url=f"tcp://127.0.0.1:{port}", token="s3cret", tls=True,
                             tls_ca=cert)
            ids = emit_many(3)
            assert sink.wait_for_delivery(timeout=10)
            assert silent[1].recv(1) == b""  # the oldest under way made room for it
        finally:
            for sock in silent:
                sock.close()
    assert collector.ids() == ids
    stats = server.server.stats()
    assert stats["tls_handshakes_evicted"] == 2, stats
    assert collector_says(caplog, "TLS handshake with 127.0.0.1:",
                          "closed unfinished to make room", "max_connections is 2")


def test_a_tls_handshake_under_way_is_not_closed_for_a_silent_connection(
        collector: Collector, root: Path) -> None:
    """At max_connections the oldest unfinished handshake was closed, even one whose
    client had sent its ClientHello and was one round trip from done, while newer
    connections that had sent nothing stayed: under a flood, a shipper further away
    than the flood's next few connections never got in. Now a connection that has
    sent nothing is closed first."""
    import ssl

    from audit_middleware.wire import Hello

    cert, key = self_signed_certificate(root)
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret",
                             tls_cert=cert, tls_key=key, max_connections=2,
                             handshake_timeout=60.0)
    port = server.server.tcp_port()
    assert port is not None
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    honest = socket.create_connection(("127.0.0.1", port), timeout=5)
    silent: list[socket.socket] = []
    try:
        honest.sendall(outgoing.read())  # its ClientHello...
        incoming.write(honest.recv(65536))  # ...answered: the collector waits for it
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5)
                  for _ in range(2)]
        wait_until(lambda: server.server.stats().get("tls_handshakes_evicted") == 1, 10,
                   "one handshake closed to make room for the second silent connection")
        assert silent[0].recv(1) == b""  # the oldest that had said nothing
        while True:  # the honest client's handshake ends (its reply read late)
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                honest.sendall(outgoing.read())
                data = honest.recv(65536)
                assert data, "the collector closed the honest client's handshake"
                incoming.write(data)
        tls.write(Hello(source="honest", token="s3cret").encode())
        honest.sendall(outgoing.read())
        wait_until(lambda: server.server.stats()["connections_open"] == 1, 10,
                   "the honest client's connection open")
    finally:
        honest.close()
        for sock in silent:
            sock.close()


class _TLSByHand:
    """A TLS client driven by hand over a plain socket: the test reads what comes on the
    wire, and the client never answers the collector's close (its close_notify), as a
    flood's client does not."""

    def __init__(self, port: int, cert: Path) -> None:
        import ssl

        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def handshake(self) -> None:
        import ssl

        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self.incoming.write(self.sock.recv(65536))
        self.sock.sendall(self.outgoing.read())  # its Finished; then not a word

    def received_until_closed(self) -> tuple[ErrorReply, bool]:
        """The error the collector sent before it ended the TCP connection (a recv that
        times out fails the test: the collector kept the connection), and whether it
        said close_notify first."""
        import ssl

        received = b""
        while chunk := self.sock.recv(65536):  # until the collector's FIN
            received += chunk
        self.incoming.write(received)
        self.incoming.write_eof()
        plain, notified = b"", True
        try:
            while data := self.tls.read(65536):
                plain += data
        except ssl.SSLError:  # the end without a close_notify: an abort
            notified = False
        kind, length = parse_header(plain[:5], 1 << 20)
        assert kind is FrameType.ERROR
        return ErrorReply.decode(plain[5:5 + length]), notified

    def close(self) -> None:
        self.sock.close()


def test_a_tls_connection_closed_before_its_hello_to_make_room_is_aborted(
        collector: Collector, root: Path) -> None:
    """A TLS connection past its handshake that had not said hello, closed to make room
    for a new one, was closed politely: close_notify sent, and its socket (a file) kept
    until the client answered, up to asyncio's 30 s; a flood's client never answers.
    Now it is aborted once its error is sent: the client's TCP connection ends at once."""
    cert, key = self_signed_certificate(root)
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret",
                             tls_cert=cert, tls_key=key, max_connections=1,
                             handshake_timeout=60.0)
    port = server.server.tcp_port()
    assert port is not None
    silent = _TLSByHand(port, cert)
    honest: RawClient | None = None
    try:
        silent.handshake()
        wait_until(lambda: server.server.stats()["connections_open"] == 1, 10,
                   "the silent connection past its TLS handshake")
        honest = _tls_raw_client(port, cert)
        honest.hello(token="s3cret")  # at the limit: room made for it
        error, notified = silent.received_until_closed()
    finally:
        silent.close()
        if honest is not None:
            honest.close()
    assert error.code == ErrorCode.TOO_MANY_CONNECTIONS
    assert not notified  # an abort sends no close_notify
    assert server.server.stats()["connections_evicted"] == 1


def test_a_tls_connection_refused_at_the_limit_is_not_kept_for_its_close_notify(
        collector: Collector, root: Path) -> None:
    """A TLS connection refused at max_connections was closed politely and kept until its
    client answered close_notify, up to asyncio's 30 s, out of the count of connections:
    a flood refused at the limit held a file each that long, the files the limit keeps
    for the store. Now a connection the client has not let go of within a second of its
    close is aborted."""
    cert, key = self_signed_certificate(root)
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret",
                             tls_cert=cert, tls_key=key, max_connections=1)
    port = server.server.tcp_port()
    assert port is not None
    honest = _tls_raw_client(port, cert)
    refused: _TLSByHand | None = None
    try:
        honest.hello(token="s3cret")  # the one slot, greeted: not closed to make room
        refused = _TLSByHand(port, cert)
        refused.handshake()
        error, _ = refused.received_until_closed()
    finally:
        honest.close()
        if refused is not None:
            refused.close()
    assert error.code == ErrorCode.TOO_MANY_CONNECTIONS
    assert server.server.stats()["connections_refused_too_many_connections"] == 1


def _tls_raw_client(port: int, cert: Path) -> RawClient:
    import ssl

    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    client = RawClient(tcp=("127.0.0.1", port))
    client.sock = context.wrap_socket(client.sock)
    return client


def _client_hello() -> bytes:
    """The bytes a TLS client sends first (its ClientHello)."""
    import ssl

    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(("client", "probe"), [
    ("connects and resets", True),
    ("sends half a hello and closes", False),
    ("sends its hello, reads the reply and closes", False),
])
def test_what_a_client_sent_before_closing_tells_a_probe_from_a_failed_handshake(
        collector: Collector, root: Path, caplog: pytest.LogCaptureFixture, client: str,
        probe: bool) -> None:
    """asyncio ends a handshake at any EOF with the same bare ConnectionResetError: a
    client that sent half a hello, or read the collector's hello and went without an
    alert (a client that does not trust the certificate, or gave up), was counted as a
    probe and logged at debug level only; and a probe that resets (as load balancers'
    health checks do) was warned about as a failed handshake."""
    import socket
    import struct

    cert, key = self_signed_certificate(root)
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret",
                             tls_cert=cert, tls_key=key)
    port = server.server.tcp_port()
    assert port is not None
    hello = _client_hello()
    with caplog.at_level(logging.DEBUG, "collector.ingest"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            if client == "connects and resets":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif client == "sends half a hello and closes":
                sock.sendall(hello[:len(hello) // 2])
                time.sleep(0.2)
            else:
                sock.sendall(hello)
                assert sock.recv(65536)  # the collector's hello: the client goes
        # Each is counted, then logged: its log line, the last thing the collector's
        # thread does of it, waited for (a count seen first may be ahead of its line).
        assert collector_says(caplog, "closed the connection before its TLS hello"
                              if probe else "TLS handshake with")
    stats = server.server.stats()
    warned = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.WARNING and "TLS" in r.getMessage()]
    if probe:
        assert (stats.get("tls_probes"), stats.get("tls_handshake_failures")) == (1, None), \
            stats
        assert warned == [], warned
    else:
        assert (stats.get("tls_probes"), stats.get("tls_handshake_failures")) == (None, 1), \
            stats
        assert len(warned) == 1 and "in the middle of the handshake" in warned[0], warned


def test_a_stop_ends_the_tls_handshakes_under_way_without_a_traceback(
        root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Clients silent in the TLS handshake (a scanner, a hung client) when the collector
    stops: their handshakes end with the shutdown, not in asyncio.run's final cancel,
    where each logged an "Exception in callback ... CancelledError" traceback."""
    import asyncio
    import socket

    from collector.ingest import IngestServer

    cert, key = self_signed_certificate(root)

    async def main() -> tuple[list[socket.socket], int]:
        server = IngestServer(object(), IngestSettings(  # type: ignore[arg-type]
            socket_path=None, tcp_host="127.0.0.1", token="s3cret", tls_cert=cert,
            tls_key=key, handshake_timeout=30))
        await server.start()
        port = server.tcp_port()
        assert port is not None
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5)
                  for _ in range(3)]
        await asyncio.sleep(0.3)  # accepted: their handshakes under way
        await server.shutdown(drain_timeout=1.0)
        return silent, len(asyncio.all_tasks()) - 1

    with caplog.at_level(logging.WARNING):
        silent, left = asyncio.run(main())
    try:
        assert left == 0  # nothing left for asyncio.run to cancel
        assert all(s.recv(1) == b"" for s in silent)  # closed by the shutdown
    finally:
        for s in silent:
            s.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors


def test_a_wrong_token_is_not_taken_for_a_tls_mistake(
        collector: Collector, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture) -> None:
    server = collector.start(socket_path=None, tcp_host="127.0.0.1", token="s3cret")
    sink = make_sink(url=f"tcp://127.0.0.1:{server.server.tcp_port()}", token="wrong")
    with caplog.at_level(logging.WARNING, "audit_middleware"):
        emit_many(2)
        sink.flush(timeout=5)
    assert "unauthorized" in caplog.text and "tls" not in caplog.text.lower(), caplog.text
