"""What the ingest server answers when the store cannot take what validation accepted:
an event the store cannot encode is rejected on its own (its sender must not retry it
forever) and the rest of its batch is stored; a write that fails (disk full) is still a
retryable error for the whole batch. On a real unix socket with the real Store."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from audit_middleware.wire import ErrorCode, ErrorReply, FrameType
from collector.canonical_lines import CanonicalLines
from collector.ingest import IngestSettings
from collector.storage import records
from collector.storage.segments import ActiveSegment
from tests.collector.storage_helpers import refuse_to_encode
from tests.collector.test_ingest import event, lines, result
from tests.e2e.harness import InProcessCollector, RawClient, open_store, short_tmp, stored_events

#: The event whose id the store's encoder is made to refuse (a validator/store mismatch:
#: validation accepts it, encoding raises).
POISON = event(2)["id"]


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_to_encode(monkeypatch, POISON)


@contextmanager
def collector() -> Iterator[tuple[RawClient, InProcessCollector, Path]]:
    """A client (after its hello) of an ingest server on a fresh store."""
    with short_tmp() as tmp:
        store = open_store(tmp / "data")
        server = InProcessCollector(store, IngestSettings(socket_path=tmp / "c.sock"))
        client = RawClient(tmp / "c.sock")
        try:
            client.hello()
            yield client, server, tmp / "data"
        finally:
            client.close()
            server.close()
            store.close()


def stored(data_dir: Path) -> dict[str, int]:
    """{event id: its source_seq} of every stored record."""
    return {r["id"]: r["source_seq"] for r in stored_events(data_dir)}


@pytest.mark.usefixtures("poisoned")
def test_an_event_the_store_cannot_encode_is_rejected_alone_and_the_rest_stored() -> None:
    batch = lines(event(1), event(2), event(3), event(4, v=2))
    with collector() as (client, server, data_dir):
        reply = result(client.batch(7, batch, [11, 12, 13, 14]))
        assert reply.written == [event(1)["id"], event(3)["id"]]
        assert [(r.index, r.seq, r.id) for r in reply.rejected] == [
            (1, 12, POISON), (3, 14, event(4)["id"])]
        reason = reply.rejected[0].reason
        assert reason.startswith("storage_error: ") and "injected" in reason, reason
        assert stored(data_dir) == {event(1)["id"]: 11, event(3)["id"]: 13}
        assert server.stats()["events_rejected"] == 2
        assert "storage_errors" not in server.stats()
        # The connection goes on: the next batch is stored as usual.
        assert result(client.batch(8, lines(event(5)), [15])).written == [event(5)["id"]]


@pytest.mark.usefixtures("poisoned")
def test_a_batch_of_only_events_the_store_cannot_encode_is_answered_not_retried() -> None:
    with collector() as (client, _, data_dir):
        reply = result(client.batch(1, lines(event(2))))
        assert (reply.written, reply.duplicates) == ([], [])
        assert [(r.index, r.id) for r in reply.rejected] == [(0, POISON)]
        assert stored(data_dir) == {}


@pytest.mark.usefixtures("poisoned")
def test_a_failed_write_is_still_retryable_for_the_whole_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_append = ActiveSegment.append
    full = [True]

    def append(self: ActiveSegment, data: bytes) -> int:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(self, data)

    monkeypatch.setattr(ActiveSegment, "append", append)
    batch = lines(event(1), event(2), event(3))
    with collector() as (client, server, data_dir):
        kind, payload = client.batch(1, batch)
        assert kind is FrameType.ERROR, payload
        error = ErrorReply.decode(payload)
        assert (error.code, error.batch, error.fatal) == (
            ErrorCode.STORAGE_UNAVAILABLE, 1, False)
        assert error.exception().retryable and "No space left" in error.message
        assert stored(data_dir) == {}
        full[0] = False  # space freed: the same batch again
        reply = result(client.batch(2, batch))
        assert reply.written == [event(1)["id"], event(3)["id"]]
        assert [r.id for r in reply.rejected] == [POISON]
        assert server.stats()["storage_errors"] == 1


def test_the_store_leaves_out_only_what_it_cannot_encode_when_asked(tmp_path: Path) -> None:
    bad = {**event(2), "target": {"a set"}}  # as if validation had let it through
    store = open_store(tmp_path / "data")
    try:
        strict = store.submit([event(1), bad], "s", [1, 2])
        with pytest.raises(Exception, match="event 1 cannot be stored"):
            strict.result()
        written = store.submit([event(1), bad, event(3)], "s", [1, 2, 3],
                               reject_unencodable=True).result()
    finally:
        store.close()
    assert written.written == [event(1)["id"], event(3)["id"]]
    assert [(r.position, r.id) for r in written.rejected] == [(1, bad["id"])]
    assert written.rejected[0].reason.startswith("the event cannot be stored")
    assert stored(tmp_path / "data") == {event(1)["id"]: 1, event(3)["id"]: 3}


def test_an_unexpected_encoder_failure_rejects_that_event_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in encoding (an exception the encoder does not expect) must not close the
    connection: its sender would send the same batch again, forever."""
    real = records.id_key

    def id_key(key: str) -> bytes | str:  # a bug: an exception the encoder does not expect
        if key == POISON:
            raise RuntimeError("injected bug")
        return real(key)

    monkeypatch.setattr(records, "id_key", id_key)
    monkeypatch.setattr(CanonicalLines, "read", lambda self, line: None)  # the general path
    with collector() as (client, _, data_dir):
        reply = result(client.batch(3, lines(event(1), event(2), event(3)), [1, 2, 3]))
        assert reply.written == [event(1)["id"], event(3)["id"]]
        assert [(r.index, r.id) for r in reply.rejected] == [(1, POISON)]
        assert "RuntimeError: injected bug" in reply.rejected[0].reason
        assert stored(data_dir) == {event(1)["id"]: 1, event(3)["id"]: 3}
        assert result(client.batch(4, lines(event(4)), [4])).written == [event(4)["id"]]
