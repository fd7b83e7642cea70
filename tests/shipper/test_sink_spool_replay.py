"""CollectorSink while the collector is away: batches spooled, then replayed once, in
order (also another process's spool, and the spool of the same collector spelled
anew), never into another collector; a corrupt or cut spool file loses only its own."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from audit_middleware.shipper import spool_adoption
from tests.e2e.harness import wait_until
from tests.shipper.sink_helpers import Collector, SinkFactory, emit_many
from tests.shipper.spool_helpers import reads_refused


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


def test_events_the_collector_rejects_in_a_replayed_batch_are_counted_and_named_by_their_source(
        collector: Collector, make_sink: SinkFactory, root: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A batch of an earlier process, replayed, with events the collector rejects:
    counted (``rejected``), the rest of the batch and the records after it delivered
    (the spool is not held up by them), and each rejection logged with the seq and the
    source the batch was numbered by. It was logged as the replaying process's own
    event of that seq: an operator looking up that event found another one, or none."""
    from audit_middleware import emit
    from audit_middleware.event import json_line
    from audit_middleware.shipper.spool import Spool
    from audit_middleware.testing import capture_audit_events
    from audit_middleware.wire import encode_batch_body

    with capture_audit_events():
        good = [json_line(emit("team_created", f"t{i}")) for i in range(3)]
    lines = [good[0], b'{"not": "an event"}\n', good[1], b"not json\n"]
    earlier = Spool(root / "spool", max_bytes=1 << 20, destination=collector.url)
    assert earlier.append(encode_batch_body("gone:1:ab", [1, 2, 3, 4], lines, 4))
    assert earlier.append(encode_batch_body("gone:1:ab", [5], [good[2]], 5))
    earlier.close()

    collector.start()
    with caplog.at_level(logging.ERROR, "audit_middleware"):
        sink = make_sink()
        assert sink.wait_for_delivery(timeout=20)
    stats = sink.stats()
    assert (stats["acknowledged"], stats["rejected"], stats["dropped"]) == (3, 2, 0)
    assert len(collector.ids()) == 3 and stats["spool_bytes"] == 0
    said = [r.getMessage() for r in caplog.records if "rejected event" in r.getMessage()]
    assert len(said) == 2, said
    assert "#2 of gone:1:ab" in said[0] and "#4 of gone:1:ab" in said[1], said


def test_a_spool_file_the_disk_cannot_read_holds_up_nothing_else_and_is_replayed_later(
        collector: Collector, make_sink: SinkFactory, root: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A read refused by the disk (EIO) in the spool's first file escaped the replay:
    a traceback at every cycle of the worker, and every later batch spooled behind that
    file for good. Now the file waits for the next scan (said), newer events go to the
    collector meanwhile, delivery is not said done until the file is replayed too."""
    from audit_middleware.shipper import sink_spooling
    from audit_middleware.shipper.spool_files import SUFFIX

    monkeypatch.setattr(sink_spooling, "_ORPHAN_SCAN_INTERVAL", 0.1)
    sink = make_sink()
    spooled = emit_many(10, "a")
    assert sink.flush(timeout=10) and sink.stats()["spooled"] == 10
    (path,) = (root / "spool").glob("*" + SUFFIX)
    real_pread = os.pread

    with caplog.at_level(logging.INFO, "audit_middleware"):
        monkeypatch.setattr(os, "pread", reads_refused(path))
        collector.start()
        # Once it is held aside: events spooled before that went into it, and wait with it.
        wait_until(lambda: "cannot read" in caplog.text, timeout=30,
                   message="the spool file the disk refuses, said")
        later = emit_many(10, "b")
        wait_until(lambda: collector.ids() == later, timeout=30,
                   message="the events after the file that cannot be read")
        assert sink.wait_for_delivery(timeout=0.5) is False  # that file is still to come
        assert sink.stats()["spool_unread_files"] == 1  # and why, for a monitor
        assert "spool replayed" not in caplog.text  # not said while it waits
        monkeypatch.setattr(os, "pread", real_pread)  # the disk reads it again
        assert sink.wait_for_delivery(timeout=20)
    assert sorted(collector.ids()) == sorted(spooled + later)
    assert "cannot read" in caplog.text and "background work failed" not in caplog.text
    assert "spool replayed" in caplog.text
    assert (sink.stats()["dropped"], sink.stats()["spool_unread_files"]) == (0, 0)
