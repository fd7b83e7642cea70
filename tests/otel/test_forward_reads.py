"""The forwarder's reads of the store on their reader thread (``collector.forward_reads``),
at its stop: a read under way when the stop comes (made to wait here on an event, as a
slow disk would) and what the stop leaves of it. The hung disk itself, in a real
collector: tests/faults/test_forward_hung_reads.py."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector import forward_reads
from collector import query as q
from collector.read_deadline import Poller
from collector.store import Store
from tests.e2e.harness import wait_until
from tests.otel.otlp_receiver import OTLPReceiver
from tests.otel.test_forwarder import forwarder, write


class HeldRead:
    """``q.search`` made at once (its Reader opened), its answer then held until
    ``release``: ``under_way`` is set once a read is held."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.under_way = threading.Event()
        self.released = threading.Event()
        self.thread: threading.Thread | None = None  # the reader thread, in the read
        search = q.search

        def held(*args: Any, **kwargs: Any) -> q.Page:
            page = search(*args, **kwargs)
            self.thread = threading.current_thread()
            self.under_way.set()
            self.released.wait()
            return page

        monkeypatch.setattr(q, "search", held)

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldRead]:
    read = HeldRead(monkeypatch)
    try:
        yield read
    finally:
        read.release()  # (a read left behind ends with the test)


def released_by_the_stop(held: HeldRead, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read answers as the stop ends the reader thread: one under way, not hung."""
    close = Poller.close

    def closing(poller: Poller) -> threading.Thread | None:
        held.release()
        return close(poller)

    monkeypatch.setattr(Poller, "close", closing)


def test_the_stop_waits_for_a_read_under_way_that_is_not_hung_and_closes_its_files(
        store: Store, receiver: OTLPReceiver, held: HeldRead,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop gave up the read at once and returned with the reader thread still
    holding the index's connection and the segment files (closed some time later,
    on that thread, as it ends)."""
    write(store, 2)
    fwd = forwarder(store, receiver)
    released_by_the_stop(held, monkeypatch)
    fwd.start()
    assert held.under_way.wait(30)
    fwd.stop()
    assert held.thread is not None
    assert held.thread.name == "audit-forward-read"
    assert not held.thread.is_alive()  # its Readers closed on it, last


def test_a_read_said_hung_then_left_behind_by_the_stop_is_no_longer_waited_on(
        store: Store, receiver: OTLPReceiver, held: HeldRead,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Once stopped, the forwarder's stats (the final stats file's) said it was still
    waiting on the disk, its waiting time growing: ``state`` is "stopped", the hung
    read still counted."""
    monkeypatch.setattr(forward_reads, "READ_STALL", 0.0)  # said at once
    write(store, 2)
    fwd = forwarder(store, receiver)
    fwd.start()
    wait_until(lambda: fwd.stats()["state"] == "waiting_on_disk", message="said hung")
    fwd.stop()
    stats = fwd.stats()
    assert (stats["state"], stats["disk_waiting"], stats["disk_waiting_seconds"],
            stats["disk_hung"]) == ("stopped", 0, 0.0, 1)
    assert receiver.seqs() == []


def test_a_forwarder_dropped_without_a_stop_ends_its_reader_thread(
        store: Store, receiver: OTLPReceiver) -> None:
    """One stepped and dropped (as tests do) left its reader thread waiting for a read
    for the rest of the process, with the index's connection and segment files open:
    48 threads and ~270 descriptors after tests/otel's forwarder tests."""
    write(store, 2)
    before = set(threading.enumerate())
    fwd = forwarder(store, receiver)
    assert fwd.step() == 2
    [thread] = [t for t in threading.enumerate()
                if t not in before and t.name == "audit-forward-read"]
    del fwd
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize("fails", [False, True])
def test_a_read_said_hung_is_said_over_in_the_words_of_how_it_ended(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        fails: bool) -> None:
    """"The data directory answered again ...; forwarding goes on" was said of a late
    read that failed too: nothing was forwarded, and the operator read the outage as
    over. A failed one says it failed, and that the forwarder retries."""
    monkeypatch.setattr(forward_reads, "READ_STALL", 0.0)  # said at once
    reads = forward_reads.StoreReads(tmp_path, lambda: False)
    said = threading.Event()
    stalled = reads._stalled

    def saying(started: float) -> None:
        stalled(started)
        said.set()

    monkeypatch.setattr(reads, "_stalled", saying)

    def late() -> str:
        said.wait()  # returns once it was said hung, as a read the disk held
        if fails:
            raise OSError(5, "Input/output error")
        return "read"

    with caplog.at_level(logging.WARNING, logger="collector.forward"):
        if fails:
            with pytest.raises(OSError, match="Input/output error"):
                reads.read(late)
        else:
            assert reads.read(late) == "read"
    reads.close(10)
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if fails:
        assert "returned after" in line and "but with an error (OSError: [Errno 5] " \
            "Input/output error): nothing was read or forwarded; the forwarder retries " \
            "with backoff" in line, line
        assert "forwarding goes on" not in line
    else:
        assert "answered again after" in line and line.endswith("; forwarding goes on")
