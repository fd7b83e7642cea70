"""The forwarder against a real OTLP/HTTP receiver: every field of every exported log
record, order, batches, the checkpoint across restarts, outages and refusals, the lag."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from audit_middleware.otel import log_attributes, log_body
from collector import forward_reads
from collector.forward_checkpoint import CHECKPOINT_FILE, CheckpointError
from collector.forward_config import ForwardError, ForwardSettings, parse_headers
from collector.forwarder import ExportFailed, Forwarder
from collector.storage.records import created_micros
from collector.storage.regular_files import NotRegularFileError
from collector.store import StorageSettings, Store
from tests.collector.storage_helpers import descriptors_into, event
from tests.e2e.harness import outcome_within, wait_until
from tests.otel.otlp_receiver import OTLPReceiver, any_value, attributes

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
EVENT_ID = "01a221d3-6983-75d6-9f9d-bf4376d5045b"


def settings(receiver: OTLPReceiver, **overrides: Any) -> ForwardSettings:
    values: dict[str, Any] = {"endpoint": receiver.endpoint, "batch_size": 4, "timeout": 0.5,
                              "backoff_initial": 0.02, "backoff_max": 0.1,
                              "poll_interval": 0.02}
    values.update(overrides)
    return ForwardSettings(**values)


def forwarder(store: Store, receiver: OTLPReceiver, **overrides: Any) -> Forwarder:
    return Forwarder(store.settings.data_dir, settings(receiver, **overrides))


def stored(store: Store) -> list[dict[str, Any]]:
    from collector.query import iter_records

    return list(iter_records(store.settings.data_dir))


def write(store: Store, count: int, start: int = 1, **fields: Any) -> None:
    store.write([event(start + i, **fields) for i in range(count)])


def leave_checkpoint(store: Store, endpoint: str, seq: int, **fields: Any) -> Path:
    """A checkpoint file as a forwarder left it (``fields``: ``event_id``...)."""
    path = store.settings.data_dir / CHECKPOINT_FILE
    path.write_text(json.dumps({"endpoint": endpoint, "seq": seq,
                                "updated": "2026-11-25T00:00:00Z", **fields}))
    return path


def checkpoint_save_fails_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next checkpoint save meets a full disk; the ones after it succeed."""
    from collector.forward_checkpoint import CheckpointFile

    save = CheckpointFile.save
    failures = [OSError(28, "No space left on device")]

    def failing_once(self: CheckpointFile, *args: Any) -> None:
        if failures:
            raise failures.pop()
        save(self, *args)

    monkeypatch.setattr(CheckpointFile, "save", failing_once)


def step_until(fwd: Forwarder, count: Callable[[], int], want: int, limit: int,
               expected: type[Exception]) -> None:
    """Step ``fwd`` (its refused exports, ``expected``, are part of the test) until
    ``count()`` reaches ``want``, in fewer than ``limit`` steps."""
    steps = 0
    while count() < want:
        steps += 1
        assert steps < limit, fwd.stats()
        with contextlib.suppress(expected):
            fwd.step()


def test_every_field_of_every_record_reaches_the_receiver(store: Store,
                                                           receiver: OTLPReceiver) -> None:
    store.write([event(1, trace_id=TRACE, span_id=SPAN),
                 event(2, type="run_dropped", principal="system", client_ip=""),
                 event(3, client_ip="192.0.2.50", peer_ip="10.0.0.2", status="failed: HTTP 500"),
                 event(4, type="user_sign_in", status="password"),
                 event(5, type="request_denied", principal="", status="HTTP 403 on DELETE")])
    fwd = forwarder(store, receiver, headers={"Authorization": "Bearer t0ken"}, batch_size=8)
    while fwd.step():
        pass
    records = stored(store)
    (request,) = receiver.requests
    (resource_logs,) = request.resource_logs
    resource = {kv.key: any_value(kv.value) for kv in resource_logs.resource.attributes}
    assert resource["service.name"] == "audit-collector"
    assert resource["telemetry.sdk.language"] == "python"
    (scope_logs,) = resource_logs.scope_logs
    assert scope_logs.scope.name == "audit_middleware"
    assert receiver.headers[0]["authorization"] == "Bearer t0ken"
    received = list(scope_logs.log_records)
    assert len(received) == len(records) == 5
    # WARN: recorded as failed, or a denied request (denied_event), as the app's copy.
    warn = [False, False, True, False, True]
    for got, record, warned in zip(received, records, warn, strict=True):
        assert got.event_name == record["type"]
        assert got.time_unix_nano == created_micros(record["created"]) * 1000
        assert got.observed_time_unix_nano >= got.time_unix_nano
        assert (got.severity_number, got.severity_text) == ((13, "WARN") if warned
                                                            else (9, "INFO"))
        assert got.body.string_value == log_body(record)
        assert json.loads(got.body.string_value)["id"] == record["id"]
        assert attributes(got) == {**log_attributes(record),
                                   "audit.collector.seq": record["seq"]}
        assert got.dropped_attributes_count == 0
        assert got.trace_id == (bytes.fromhex(record["trace_id"]) if record["trace_id"]
                                else b"")
        assert got.span_id == (bytes.fromhex(record["span_id"]) if record["span_id"] else b"")
        assert got.flags == 0
    first = attributes(received[0])
    assert first["log.record.uid"] == records[0]["id"]
    assert first["user.id"] == "user-1" and first["client.address"] == "203.0.113.7"
    assert first["audit.org.id"] == "org-1" and first["audit.workspace.name"] == "Main"
    assert "client.address" not in attributes(received[1])
    assert attributes(received[2])["network.peer.address"] == "10.0.0.2"


def test_records_go_in_seq_order_one_batch_after_another(store: Store,
                                                         receiver: OTLPReceiver) -> None:
    write(store, 10)
    fwd = forwarder(store, receiver, batch_size=4)
    assert [fwd.step(), fwd.step(), fwd.step(), fwd.step()] == [4, 4, 2, 0]
    assert [len(r.resource_logs[0].scope_logs[0].log_records) for r in receiver.requests] == [
        4, 4, 2]
    assert receiver.seqs() == list(range(1, 11))
    assert fwd.stats()["checkpoint_seq"] == 10


def test_a_restarted_forwarder_resumes_after_its_checkpoint(store: Store,
                                                            receiver: OTLPReceiver) -> None:
    write(store, 5)
    first = forwarder(store, receiver)
    first.start()
    receiver.wait_for(5)
    first.stop()
    checkpoint = json.loads((store.settings.data_dir / CHECKPOINT_FILE).read_text())
    assert (checkpoint["endpoint"], checkpoint["seq"]) == (receiver.endpoint, 5)
    write(store, 3, start=6)
    second = forwarder(store, receiver)
    second.start()
    try:
        receiver.wait_for(8)
    finally:
        second.stop()
    assert receiver.seqs() == list(range(1, 9))  # nothing sent twice, nothing missed


def test_a_stopped_forwarder_leaves_nothing_of_the_data_directory_open(
        tmp_path: Path, receiver: OTLPReceiver) -> None:
    """Its thread read through a Reader it never closed: the stop left the segment
    files it had read open for the rest of the process."""
    data = tmp_path / "data"
    with Store(StorageSettings(data_dir=data)) as store:
        write(store, 6)
        fwd = forwarder(store, receiver)
        fwd.start()
        try:
            receiver.wait_for(6)
        finally:
            fwd.stop()
    assert descriptors_into(data) == []


def test_an_outage_of_the_receiver_delays_but_loses_nothing(store: Store,
                                                             receiver: OTLPReceiver) -> None:
    write(store, 3)
    fwd = forwarder(store, receiver)
    fwd.start()
    try:
        receiver.wait_for(3)
        receiver.stop()
        write(store, 6, start=4)
        fwd.wake()
        wait_until(lambda: fwd.stats()["failures"] >= 2, 20, "failed exports")
        stats = fwd.stats()
        assert stats["state"] == "retrying" and stats["last_error"]
        assert stats["checkpoint_seq"] == 3
        assert stats["lag_events"] == 6 and stats["lag_seconds"] > 0
        receiver.start()  # same port
        receiver.wait_for(9)
        wait_until(lambda: fwd.stats()["lag_events"] == 0, 20, "caught up")
    finally:
        fwd.stop()
    seqs = receiver.seqs()
    assert sorted(set(seqs)) == list(range(1, 10))
    assert seqs == sorted(seqs)  # in order, even across the outage
    assert fwd.stats()["lag_seconds"] == 0


@pytest.mark.parametrize("status", [503, 429, 400, 500])
def test_a_refused_batch_is_retried_never_skipped(store: Store, receiver: OTLPReceiver,
                                                  status: int) -> None:
    write(store, 4)
    receiver.refuse_next(2, status)
    fwd = forwarder(store, receiver)
    fwd.start()
    try:
        receiver.wait_for(4)
    finally:
        fwd.stop()
    assert receiver.refused == 2
    assert receiver.seqs() == [1, 2, 3, 4]
    assert fwd.stats()["failures"] >= 1


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_no_acknowledgement(store: Store, receiver: OTLPReceiver,
                                          status: int) -> None:
    """The exporter does not follow redirects and takes any status below 400 for
    success: an endpoint that redirected (http to https at a load balancer, a moved
    path) had the checkpoint moved past records it never received, with no word."""
    write(store, 4)
    receiver.refuse_next(1, status, Location="https://elsewhere.example/v1/logs")
    fwd = forwarder(store, receiver)
    with pytest.raises(Exception, match=f"did not accept 4 records .*: HTTP {status} "
                       r".*redirects to https://elsewhere.example/v1/logs"):
        fwd.step()
    assert fwd.checkpoint.position(receiver.endpoint) == 0
    assert fwd.step() == 4  # the same batch, sent again
    assert receiver.seqs() == [1, 2, 3, 4]


def test_a_redirects_location_is_quoted_cut_like_an_answers_body(
        store: Store, receiver: OTLPReceiver) -> None:
    """The body a receiver answers is quoted 200 characters at most; a Location was
    quoted whole (up to 64 KiB, the header line limit) into last_error, the stats file
    and the log."""
    write(store, 2)
    receiver.refuse_next(1, 302, Location="https://elsewhere.example/" + "a" * 8000)
    fwd = forwarder(store, receiver)
    with pytest.raises(ExportFailed,
                       match="redirects to https://elsewhere.example/aaa") as failed:
        fwd.step()
    assert len(str(failed.value)) < 500  # what last_error says


@pytest.mark.parametrize("retry_after", ["120", "Fri, 01 Jan 2100 00:00:00 GMT"])
def test_a_receivers_retry_after_is_honoured(store: Store, receiver: OTLPReceiver,
                                             retry_after: str) -> None:
    """OTLP: a client SHOULD wait the Retry-After of a 429 or 503. The exporter honours
    it only within its own timeout; past that the forwarder retried on its own backoff
    (0.5 s, 1 s, ...), pressing a receiver that asked for a pause."""
    from collector.forward_backoff import MAX_RETRY_AFTER

    write(store, 2)
    receiver.refuse_next(1, 429, Retry_After=retry_after)
    fwd = forwarder(store, receiver)  # its own backoff: 0.02 s to 0.1 s
    with pytest.raises(Exception, match="HTTP 429 .*retry after"):
        fwd.step()
    wait = fwd._backoff()
    assert wait == (120 if retry_after == "120" else MAX_RETRY_AFTER)
    assert fwd.step() == 2
    assert fwd._backoff() < 1  # asked once, for the failure that asked


@pytest.mark.parametrize("status", [413, 503])
def test_a_retry_after_too_large_to_read_is_ignored(store: Store, receiver: OTLPReceiver,
                                                     status: int) -> None:
    """An HTTP-date with a year of 22 digits raised OverflowError in the forwarder's
    session (the exporter took the answer for a request that failed unanswered:
    last_error said only "see the log") and, on a 429/503, in the exporter's own parser
    too (out of its export)."""
    write(store, 2)
    receiver.refuse_next(1, status,
                         Retry_After="Mon, 01 Jan 9999999999999999999999 00:00:00 GMT")
    fwd = forwarder(store, receiver)
    with pytest.raises(ExportFailed, match=f"did not accept 2 records .*: HTTP {status} "):
        fwd.step()
    assert fwd._backoff() < 1  # no wait asked: the forwarder's own backoff
    assert fwd.step() == (1 if status == 413 else 2)  # a 413 halved the batch


def test_a_retry_after_is_waited_for_the_failure_that_asked_only(
        store: Store, receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backoff read the Retry-After of the exporter's last answer at every failure:
    a failure without an answer after it (the index unreadable for a moment) waited the
    receiver's 10 minutes again."""
    from collector import query

    write(store, 2)
    receiver.refuse_next(1, 503, Retry_After="600")
    fwd = forwarder(store, receiver)
    with pytest.raises(ExportFailed, match="HTTP 503"):
        fwd.step()
    assert fwd._backoff() == 600

    def unreadable(*args: Any, **kwargs: Any) -> None:
        raise query.QueryError("the index is being rebuilt")

    monkeypatch.setattr(query, "search", unreadable)
    with pytest.raises(query.QueryError):
        fwd.step()
    assert fwd._backoff() < 1


def test_a_failed_export_says_why_in_stats(store: Store, receiver: OTLPReceiver) -> None:
    """stats' last_error said only 'see the log of opentelemetry.exporter for why'."""
    write(store, 2)
    fwd = forwarder(store, receiver)
    receiver.refuse_next(1, 404)
    with pytest.raises(Exception, match="did not accept 2 records .*: HTTP 404"):
        fwd.step()
    fwd = forwarding_to(store, "http://127.0.0.1:9/v1/logs", timeout=0.5)  # nothing there
    with pytest.raises(Exception, match="ConnectionError"):
        fwd.step()


def test_a_fifo_in_place_of_a_segment_file_is_said_for_the_running_collector(
        store: Store, receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture) -> None:
    """The forwarder's failure line and last_error quoted the command's words: "... run
    this again (... `audit-collector reindex`, the collector stopped ...)", nothing
    the operator of a running collector can follow. They name the file and what to do
    for a running collector; the error is still a NotRegularFileError of that file."""
    write(store, 2)
    [segment] = (store.settings.data_dir / "segments").glob("segment-*.jsonl")
    segment.unlink()
    os.mkfifo(segment)
    fwd = forwarder(store, receiver)
    with pytest.raises(NotRegularFileError) as failed:
        fwd.step()
    assert failed.value.filename == str(segment)
    with caplog.at_level(logging.ERROR, logger="collector.forward"):
        fwd._failed(failed.value)  # as its loop says it
    [line] = [r.getMessage() for r in caplog.records]
    said = (f"SegmentFileInTheWayError: {segment} is a FIFO, where the collector keeps a segment "
            f"file (stored records): look at what it is, move it out of the way (`mv "
            f"{segment} {segment}.aside`), then put the segment file back from a backup "
            f"and the running collector reads it at its next request and its forwarder's "
            f"next retry, with no restart (without a backup its records are lost: once "
            f"the file is moved away, queries answer and the forwarder goes on without "
            f"them, and `audit-collector verify` names the segment missing)")
    assert line.endswith(f"(1 in a row, 1 so far, retrying with backoff): {said}"), line
    assert fwd.stats()["last_error"] == said
    assert receiver.seqs() == []


def test_a_fifo_met_by_a_read_said_hung_is_said_for_the_running_collector_too(
        store: Store, receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A read said hung that returns with a segment file in the way: its line ("the
    read ... returned after ..., but with an error (...)") quoted the command's words,
    "... run this again (... `audit-collector reindex`, the collector stopped ...)",
    worded for the running collector only after the read had been said over."""
    monkeypatch.setattr(forward_reads, "READ_STALL", 0.0)  # every read said hung at once
    write(store, 2)
    [segment] = (store.settings.data_dir / "segments").glob("segment-*.jsonl")
    segment.unlink()
    os.mkfifo(segment)
    fwd = forwarder(store, receiver)
    with caplog.at_level(logging.WARNING, logger="collector.forward"), \
            pytest.raises(NotRegularFileError):
        fwd.step()
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
              and "but with an error" in r.getMessage()]
    assert f"{segment} is a FIFO, where the collector keeps a segment file" in line, line
    assert "the running collector reads it at its next request" in line, line
    assert "run this again" not in line, line


def test_an_endpoint_without_a_checkpoint_can_start_from_now(store: Store,
                                                             receiver: OTLPReceiver) -> None:
    write(store, 5)
    fwd = forwarder(store, receiver, start="now")
    assert fwd.step() == 0
    write(store, 2, start=6)
    assert fwd.step() == 2
    assert receiver.seqs() == [6, 7]


def test_another_endpoint_starts_from_its_own_beginning(store: Store,
                                                        receiver: OTLPReceiver) -> None:
    write(store, 3)
    fwd = forwarder(store, receiver)
    while fwd.step():
        pass
    with OTLPReceiver() as other:
        second = Forwarder(store.settings.data_dir, settings(other))
        while second.step():
            pass
        assert other.seqs() == [1, 2, 3]


def test_records_deleted_before_forwarding_are_counted_as_skipped(store: Store,
                                                                  receiver: OTLPReceiver
                                                                  ) -> None:
    write(store, 2)
    fwd = forwarder(store, receiver)
    fwd.checkpoint.save(receiver.endpoint, 0, None)
    fwd._position = -3  # as if seqs -2..0 had been stored and deleted by retention
    receiver.refuse_next(3, 503)  # an outage right after the gap: each retry sees it
    for _ in range(3):
        with pytest.raises(Exception, match="did not accept"):
            fwd.step()
        assert fwd.stats()["skipped"] == 3  # when seen, once (not again at each retry)
    assert fwd.step() == 2
    assert fwd.stats()["skipped"] == 3


def test_records_deleted_before_forwarding_are_no_lag(store: Store,
                                                     receiver: OTLPReceiver) -> None:
    """A new endpoint forwarding from the beginning of a store whose oldest records
    retention deleted: the lag counted every number since seq 0 (31,693 'behind' with
    50 records stored), and lag alerts went off."""
    write(store, 2)
    fwd = forwarder(store, receiver)
    fwd.checkpoint.save(receiver.endpoint, 0, None)
    fwd._position = -1000  # as if seqs -999..0 had been stored and deleted by retention
    receiver.refuse_next(1, 503)
    with pytest.raises(Exception, match="did not accept"):
        fwd.step()
    assert fwd.stats()["lag_events"] == 2


def test_lag_is_zero_when_caught_up_and_counts_unforwarded_records(store: Store,
                                                                   receiver: OTLPReceiver
                                                                   ) -> None:
    write(store, 6)
    fwd = forwarder(store, receiver, batch_size=4)
    fwd.step()
    assert (fwd.stats()["checkpoint_seq"], fwd.stats()["lag_events"]) == (4, 2)
    fwd.step()
    fwd.step()
    assert (fwd.stats()["lag_events"], fwd.stats()["lag_seconds"]) == (0, 0)


def test_a_damaged_checkpoint_is_refused_with_what_to_do(store: Store,
                                                         receiver: OTLPReceiver) -> None:
    (store.settings.data_dir / CHECKPOINT_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="move it away"):
        forwarder(store, receiver)


@pytest.mark.parametrize(("odd", "says"), [
    # a FIFO held serve's start for good, deaf to SIGTERM (its open waited for a writer)
    ("FIFO", "a FIFO, not a regular file"),
    ("/dev/zero", "a character device, not a regular file"),
    ("huge", "larger than 1,048,576 bytes"),
])
def test_a_checkpoint_that_is_no_regular_file_is_refused_at_once(
        store: Store, receiver: OTLPReceiver, odd: str, says: str) -> None:
    path = store.settings.data_dir / CHECKPOINT_FILE
    if odd == "FIFO":
        os.mkfifo(path)
    elif odd == "/dev/zero":
        path.symlink_to("/dev/zero")
    else:
        path.write_bytes(b" " * (2 << 20))
    outcome = outcome_within(30, lambda: forwarder(store, receiver))
    assert isinstance(outcome, CheckpointError), outcome
    assert says in str(outcome) and "or move it away" in str(outcome)


@pytest.mark.parametrize(("skipped", "says"), [
    ('"x"', "(a str, not a list)"),
    ("[1]", "(entry 1 is not an object of seq, event_id, reason, skipped)"),
    ('[{"seq": -3, "event_id": "%s", "reason": "r", "skipped": "s"}]',
     "(entry 1: seq -3 is not a whole number of 1 or more)"),
    ('[{"seq": true, "event_id": "%s", "reason": "r", "skipped": "s"}]',
     "(entry 1: seq True is not a whole number"),
    ('[{"seq": 5, "event_id": "nope", "reason": "r", "skipped": "s"}]',
     "(entry 1: its event_id is not an event id"),
])
def test_a_damaged_skipped_refused_list_is_named_and_the_position_kept(
        store: Store, receiver: OTLPReceiver, skipped: str, says: str) -> None:
    """A hand-edited list of records skipped as refused was said a damaged checkpoint,
    quoting its first 80 bytes (the endpoint), with moving the file away as the remedy:
    every record sent again, for a list nothing is forwarded by."""
    path = store.settings.data_dir / CHECKPOINT_FILE
    forwarder(store, receiver).checkpoint.save(receiver.endpoint, 0, None)
    value = json.loads(path.read_text())
    value["skipped_refused"] = json.loads(skipped.replace("%s", EVENT_ID))
    path.write_text(json.dumps(value))
    with pytest.raises(CheckpointError) as caught:
        forwarder(store, receiver)
    assert says in str(caught.value)
    assert "delete skipped_refused from the file (the position is kept" in str(caught.value)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"endpoint": "otel:4318"}, "http"),
    ({"batch_size": 0}, "batch size"),
    ({"backoff_initial": 5.0, "backoff_max": 1.0}, "backoff_max"),
    ({"start": "yesterday"}, "forward_from"),
])
def test_settings_that_cannot_work_are_refused(receiver: OTLPReceiver,
                                               overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ForwardError, match=message):
        settings(receiver, **overrides)


def test_headers_are_parsed_like_otel_exporter_otlp_headers() -> None:
    assert parse_headers("Authorization=Bearer x, X-Scope-OrgID=acme") == {
        "Authorization": "Bearer x", "X-Scope-OrgID": "acme"}
    with pytest.raises(ForwardError, match="key=value"):
        parse_headers("Authorization")


def test_percent_encoded_headers_are_decoded_like_otel_exporter_otlp_headers() -> None:
    """The value of OTEL_EXPORTER_OTLP_HEADERS is percent-encoded (the W3C Baggage form:
    what OpenTelemetry SDKs decode, and what vendors hand out, ``Basic%20...``). Copied
    into forward_headers, it was sent as is: a 401 at every export. A comma in a value
    could not be given at all."""
    assert parse_headers("Authorization=Basic%20dXNlcjpwYXNz,X-Tags=a%2Cb") == {
        "Authorization": "Basic dXNlcjpwYXNz", "X-Tags": "a,b"}
    with pytest.raises(ForwardError, match="printable ASCII"):
        parse_headers("X-Evil=a%0D%0AHost:%20elsewhere")  # decoded: no header injection


@pytest.mark.parametrize("text", ["X%3ATag=1", "X:Tag=1", "X Tag=1", "X(Tag)=1",
                                  "X%22Tag%22=1"])
def test_a_header_name_that_is_no_http_token_is_refused_at_start(text: str) -> None:
    """Accepted at start, then every export failed: requests refuses a name with a ``:``
    (InvalidHeader, also from ``%3A`` once decoded), a receiver one with a space or a
    parenthesis (400). A failure that never ends, from a setting checked at start."""
    with pytest.raises(ForwardError, match="not a valid HTTP header name"):
        parse_headers(text)
    assert parse_headers("X-Scope_Org.ID=1,x!#$&'*+^`|~=2") == {"X-Scope_Org.ID": "1",
                                                               "x!#$&'*+^`|~": "2"}


def test_a_checkpoint_beyond_the_stored_records_is_reported(store: Store,
                                                           receiver: OTLPReceiver,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    """The records held back until the store reaches the checkpoint's seq showed as no
    lag at all (0: caught up)."""
    write(store, 2)
    # e.g. a data directory restored from backup
    leave_checkpoint(store, receiver.endpoint, 50,
                     event_id="0192a4b2-0000-7000-8000-000000000050")
    ahead = forwarder(store, receiver)
    assert ahead.step() == 0
    stats = ahead.stats()
    assert stats["state"] == "ahead" and stats["checkpoint_seq"] == 50
    assert stats["lag_events"] == 2 and stats["lag_seconds"] > 0
    assert "beyond the newest stored seq 2" in caplog.text
    assert receiver.seqs() == []


def test_a_replaced_data_directory_is_forwarded_from_its_beginning(
        tmp_path: Path, receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint left beside a new (or restored) store counted that store's records by
    the old one's seqs: those up to its seq were never sent, and forwarding resumed after
    it without a word. The checkpoint names its event: at that seq the new store holds
    another, and forwarding starts over from the beginning of this store."""
    import logging
    import shutil

    with Store(StorageSettings(data_dir=tmp_path / "old")) as old:
        write(old, 5)
        fwd = forwarder(old, receiver)
        while fwd.step():
            pass
    with Store(StorageSettings(data_dir=tmp_path / "new")) as new:
        shutil.copy(tmp_path / "old" / CHECKPOINT_FILE, tmp_path / "new" / CHECKPOINT_FILE)
        write(new, 3)
        fwd = forwarder(new, receiver)
        with caplog.at_level(logging.WARNING, "collector.forward"):
            assert fwd.step() == 0  # the store may be catching up: nothing resent yet
            assert fwd.stats()["state"] == "ahead"
            write(new, 4, start=4)  # seq 5 is another event than the one sent as seq 5
            while fwd.step():
                pass
        assert "stores event" in caplog.text and "starts over from the beginning" in caplog.text
        sent = receiver.log_records()[5:]
        assert [attributes(r)["log.record.uid"] for r in sent] == [r["id"] for r in stored(new)]
        stats = fwd.stats()
        assert (stats["checkpoint_seq"], stats["lag_events"], stats["skipped"]) == (7, 0, 0)


def test_another_store_at_the_checkpoints_seq_is_forwarded_from_its_beginning(
        store: Store, receiver: OTLPReceiver) -> None:
    """A store holding more records than the checkpoint's seq (another collector's
    data directory restored in place): the records up to that seq were never sent."""
    write(store, 5)
    leave_checkpoint(store, receiver.endpoint, 3,
                     event_id="0192a4b2-0000-7000-8000-000000000003")
    again = forwarder(store, receiver, start="now")
    while again.step():
        pass
    assert receiver.seqs() == [1, 2, 3, 4, 5]  # whatever forward_from says: none lost


def test_another_store_is_forwarded_from_its_beginning_when_saving_the_restart_failed(
        store: Store, receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store was taken for the checkpoint's before its restart from 0 was saved: a
    save that failed (disk full) left the position at the other store's seq, and the
    retry forwarded after it, the records up to it never sent."""

    write(store, 5)
    leave_checkpoint(store, receiver.endpoint, 3,
                     event_id="0192a4b2-0000-7000-8000-000000000003")
    fwd = forwarder(store, receiver)
    checkpoint_save_fails_once(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        fwd.step()
    while fwd.step():
        pass
    assert receiver.seqs() == [1, 2, 3, 4, 5]


def test_the_same_store_catching_up_to_its_checkpoint_resends_nothing(
        store: Store, receiver: OTLPReceiver) -> None:
    """Right after a start the index may hold fewer records than were forwarded: the
    forwarder waits for the record at the checkpoint's seq, finds the event it names,
    and goes on after it."""
    write(store, 3)
    fifth = event(5)
    leave_checkpoint(store, receiver.endpoint, 5, event_id=fifth["id"])
    again = forwarder(store, receiver)
    assert again.step() == 0 and again.stats()["state"] == "ahead"
    store.write([event(4), fifth, event(6)])  # the index caught up, and one more arrived
    while again.step():
        pass
    assert receiver.seqs() == [6]
    assert again.stats()["lag_events"] == 0


@pytest.mark.parametrize("event_id", ["", "not-an-event-id", "0192A4B2-0000-7000-8000-000000000003"])
def test_a_checkpoint_naming_no_event_id_is_refused_as_damaged(
        store: Store, receiver: OTLPReceiver, event_id: str) -> None:
    """An ``event_id`` that no save writes (not an event id) was taken for another
    store's event: the whole store was sent again, with only a log line saying the
    data directory had been replaced. Refused as damaged, as a seq of the wrong type."""
    write(store, 5)
    leave_checkpoint(store, receiver.endpoint, 3, event_id=event_id)
    with pytest.raises(CheckpointError, match="is damaged"):
        forwarder(store, receiver)
    assert receiver.seqs() == []


def test_a_checkpoint_of_an_older_version_keeps_its_position_and_gains_its_event(
        store: Store, receiver: OTLPReceiver) -> None:
    """Checkpoints without ``event_id`` are used as before (nothing to compare); the next
    save names the event."""
    write(store, 6)
    path = leave_checkpoint(store, receiver.endpoint, 4)
    fwd = forwarder(store, receiver)
    while fwd.step():
        pass
    assert receiver.seqs() == [5, 6]
    saved = json.loads(path.read_text())
    assert (saved["seq"], saved["event_id"]) == (6, stored(store)[-1]["id"])


# -- records and endpoints that stalled the forwarder for good (a review helper) ------------
def test_a_record_whose_time_otlp_cannot_carry_is_sent_without_a_timestamp(
        store: Store, receiver: OTLPReceiver) -> None:
    """OTLP times are unsigned 64-bit nanoseconds. A record of year 2600 (or 1969),
    stored by a version whose ingest took any year, failed to encode and its batch was
    retried forever: nothing stored after it was ever forwarded. Ingest now refuses such
    years (tests/collector/test_validation.py); one already stored goes without an OTLP
    timestamp, its body still holding ``created``."""
    store.write([event(1), event(2, created="2600-01-01T00:00:00.000000Z"),
                 event(3, created="1969-12-31T23:59:59.000000Z"), event(4)])
    fwd = forwarder(store, receiver)
    while fwd.step():
        pass
    got = receiver.log_records()
    assert [r.time_unix_nano == 0 for r in got] == [False, True, True, False]
    assert [json.loads(any_value(r.body))["created"][:4] for r in got] == [
        "2026", "2600", "1969", "2026"]
    assert fwd.stats()["failures"] == 0


def test_a_batch_is_cut_below_what_one_export_may_carry(store: Store,
                                                          receiver: OTLPReceiver) -> None:
    """The exporter drops a request over 64 MiB without sending it, and the forwarder
    retried the same batch forever (512 records with control characters in 4 KiB fields
    made 74 MB). A batch is cut by its estimated encoded size too."""
    from collector.otlp_records import MAX_EXPORT_BYTES

    wide = "\x01" * 4096
    store.write([event(i + 1, target=wide, principal=wide, org_name=wide, workspace_name=wide,
                       status=wide) for i in range(60)])
    fwd = forwarder(store, receiver, batch_size=100)
    while fwd.step():
        pass
    assert receiver.seqs() == [r["seq"] for r in stored(store)]
    sizes = [len(request.SerializeToString()) for request in receiver.requests]
    assert len(sizes) >= 2 and max(sizes) <= MAX_EXPORT_BYTES
    assert fwd.stats()["failures"] == 0


def test_a_batch_over_the_receivers_body_limit_is_split_until_it_fits(
        store: Store, receiver: OTLPReceiver) -> None:
    """A receiver behind a proxy with a body limit (nginx's default is 1 MiB) answers
    413 to a batch over it, and the forwarder sent the same batch again forever:
    nothing after it was ever forwarded. A 413 halves the batch until it fits."""
    wide = "x" * 2048
    write(store, 8, target=wide)
    receiver.max_body = 10_000  # a record is about 4.5 KB of request
    fwd = forwarder(store, receiver, batch_size=8)
    step_until(fwd, lambda: len(receiver.seqs()), 8, 20, Exception)
    assert receiver.seqs() == list(range(1, 9))
    assert receiver.too_large == 2  # 8 refused, then 4; 2 at a time from then on
    assert fwd.stats()["last_error"] is None


def test_a_single_record_over_the_receivers_body_limit_stops_the_forwarder_visibly(
        store: Store, receiver: OTLPReceiver) -> None:
    write(store, 2, target="x" * 4096)
    receiver.max_body = 1_000
    fwd = forwarder(store, receiver)
    for _ in range(4):
        with pytest.raises(Exception, match="HTTP 413"):
            fwd.step()
    assert receiver.seqs() == []
    assert fwd.checkpoint.position(receiver.endpoint) == 0  # nothing skipped


def test_within_budget_counts_bytes_not_characters() -> None:
    """Counted in characters, text outside ASCII (up to 4 bytes a character) made a
    batch up to four times the size the budget allows."""
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from collector.otlp_records import to_log_records, within_budget

    wide = "\U0001f512" * 2000  # 4 bytes each
    records = [{**event(i, target=wide, principal=wide), "seq": i} for i in range(1, 9)]
    batch = to_log_records(records, Resource.create({}), InstrumentationScope("t"))
    budget = 100_000
    fit = within_budget(batch, budget=budget)
    assert len(encode_logs(batch[:fit]).SerializeToString()) <= budget
    assert fit < len(batch)


def test_within_budget_keeps_at_least_one_record() -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from collector.otlp_records import to_log_records, within_budget

    records = [{**event(i), "seq": i} for i in range(1, 4)]
    batch = to_log_records(records, Resource.create({}), InstrumentationScope("t"))
    assert within_budget(batch) == 3
    assert within_budget(batch, budget=1) == 1


def forwarding_to(store: Store, url: str, *, timeout: float) -> Forwarder:
    return Forwarder(store.settings.data_dir, ForwardSettings(
        endpoint=url, batch_size=4, timeout=timeout, backoff_initial=0.05, backoff_max=0.1,
        poll_interval=0.05))


class TricklingEndpoint:
    """An OTLP endpoint whose first connection trickles its answer for ever (a byte every
    0.2 s); later connections are answered at once."""

    def __init__(self) -> None:
        import socket
        import threading

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        self.connections = 0
        self.cut_off = threading.Event()  # the first connection was shut down by us
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1/logs"

    def _serve(self) -> None:
        import threading

        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn, self.connections == 1),
                             daemon=True).start()

    def _answer(self, conn: Any, trickle: bool) -> None:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceResponse,
        )

        with conn:
            conn.settimeout(5)
            while True:  # requests on this connection, one after the other
                head = b""
                while b"\r\n\r\n" not in head:
                    got = conn.recv(65536)
                    if not got:
                        return
                    head += got
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = head.split(b"\r\n\r\n", 1)[1]
                while len(body) < length:
                    body += conn.recv(65536)
                if trickle:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                    while not self.stop.wait(0.2):
                        try:
                            conn.sendall(b"x")
                        except OSError:
                            self.cut_off.set()
                            return
                    return
                answer = ExportLogsServiceResponse().SerializeToString()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                             + f"Content-Length: {len(answer)}\r\n\r\n".encode() + answer)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def relay_to(port: int) -> tuple[str, Any]:
    """A forward HTTP proxy's transport: every connection relayed to ``port`` (a proxy
    request names the full URL; the endpoint above reads only the headers it needs)."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", port))
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", listener


@pytest.mark.parametrize("through_a_proxy", [False, True], ids=["direct", "http-proxy"])
def test_an_endpoint_trickling_its_answer_is_cut_off_at_the_deadline(
        store: Store, monkeypatch: pytest.MonkeyPatch, through_a_proxy: bool) -> None:
    """The exporter's timeout bounds each socket read: an endpoint that answered a byte
    every 0.2 s held the export, and the forwarder with it, for good (no failure, no
    retry). Past forward_timeout + a grace the request's connection is shut down (closing
    the session closes only idle ones; through HTTP_PROXY, requests makes connections of
    another manager: both found by diff reviews), the attempt counts as failed, and the
    batch goes again on a new connection, which is answered."""
    import threading

    from collector import forward_export

    monkeypatch.setattr(forward_export, "EXPORT_GRACE", 0.5)
    endpoint = TricklingEndpoint()
    relay = None
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    if through_a_proxy:
        proxy_url, relay = relay_to(endpoint.listener.getsockname()[1])
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
    write(store, 3)
    fwd = forwarding_to(store, endpoint.url, timeout=0.5)
    try:
        fwd.start()
        wait_until(lambda: fwd.stats()["forwarded"] == 3, timeout=20)
        stats = fwd.stats()
        assert stats["failures"] >= 1 and stats["checkpoint_seq"] == 3
        assert endpoint.cut_off.wait(5)  # the stalled connection was shut down
        assert not [t for t in threading.enumerate() if t.name == "audit-forwarder-export"
                    and t.is_alive()]
    finally:
        fwd.stop(timeout=5)
        endpoint.close()
        if relay is not None:
            relay.close()
    assert fwd.stats()["state"] == "stopped"


def test_a_partial_success_is_counted_and_said_not_passed_unseen(
        store: Store, receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture) -> None:
    """An OTLP receiver answers 200 with ``partial_success`` when it rejected some of
    the records; the exporter reads only the status, and the checkpoint moved past
    records the receiver never kept, with no word. They are counted and logged; not
    retried (the receiver would refuse them again), as OTLP asks."""
    import logging

    write(store, 6)
    receiver.partial.append((2, "attribute audit.target.id too long"))
    fwd = forwarder(store, receiver)
    with caplog.at_level(logging.ERROR, "collector.forward"):
        while fwd.step():
            pass
    stats = fwd.stats()
    assert (stats["forwarded"], stats["rejected"], stats["failures"]) == (6, 2, 0)
    assert "rejected 2 of the 4 records of seq 1-4: attribute audit.target.id too long" \
        in caplog.text


def test_a_partial_success_is_counted_once_when_its_checkpoint_save_failed(
        store: Store, receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rejections were counted before the checkpoint was saved: a save that failed
    had the batch sent again, and the receiver's rejecting the same records again
    counted them twice."""

    write(store, 4)
    receiver.partial.extend([(2, "too long"), (2, "too long")])  # the same answer twice
    leave_checkpoint(store, receiver.endpoint, 0)  # (its first save is not the one failing)
    fwd = forwarder(store, receiver)
    checkpoint_save_fails_once(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        fwd.step()
    assert fwd.step() == 4
    assert receiver.seqs() == [1, 2, 3, 4] * 2  # the save failed after the export
    stats = fwd.stats()
    assert (stats["forwarded"], stats["rejected"], stats["checkpoint_seq"]) == (4, 2, 4)


def test_credentials_moved_from_the_endpoint_url_to_a_header_keep_the_position(
        store: Store, receiver: OTLPReceiver) -> None:
    """Older versions took ``https://user:pw@host/...``; this one refuses it, so such a
    user moves the credentials to a header, and the checkpoint, which named the old URL,
    started the forwarder over from the beginning (everything sent again) and kept the
    password in clear (a diff review). Endpoints are compared without credentials, and
    the checkpoint never holds them."""
    from collector.forward_checkpoint import CheckpointFile

    write(store, 6)
    checkpoint = CheckpointFile(store.settings.data_dir / CHECKPOINT_FILE)
    with_password = receiver.endpoint.replace("http://", "http://ops:s3cret@")
    checkpoint.path.write_text(json.dumps(  # as an older version left it
        {"endpoint": with_password, "seq": 4, "updated": "2026-11-25T00:00:00Z"}))
    fwd = forwarder(store, receiver, headers={"Authorization": "Basic b3BzOnMzY3JldA=="})
    assert "s3cret" not in checkpoint.path.read_text()  # at start: not only at the next save
    while fwd.step():
        pass
    assert receiver.seqs() == [5, 6]


@pytest.mark.parametrize(("saved", "used"), [
    ("http://{host}:{port}{path}", "http://{Host}:{port}{path}"),
    ("http://u:p@{Host}:{port}{path}", "http://{host}:{port}{path}")])
def test_the_same_endpoint_spelled_another_way_keeps_the_position(
        store: Store, receiver: OTLPReceiver, saved: str, used: str) -> None:
    """Compared as written, a host in other letters was a new endpoint: with
    forward_from=now the records between the old position and now were never sent."""
    from urllib.parse import urlsplit

    from collector.forward_checkpoint import CheckpointFile

    parts = urlsplit(receiver.endpoint)
    assert parts.hostname == "127.0.0.1"  # also reached as localhost, in any letters
    names = {"host": "localhost", "Host": "LocalHost", "port": parts.port, "path": parts.path}
    write(store, 6)
    checkpoint = CheckpointFile(store.settings.data_dir / CHECKPOINT_FILE)
    checkpoint.path.write_text(json.dumps(
        {"endpoint": saved.format(**names), "seq": 4, "updated": "2026-11-25T00:00:00Z"}))
    fwd = forwarder(store, receiver, endpoint=used.format(**names), start="now")
    while fwd.step():
        pass
    assert receiver.seqs() == [5, 6]


@pytest.mark.parametrize(("url", "shown"), [
    ("https://otel.example/v1/logs", "https://otel.example/v1/logs"),
    ("https://otel.example/v1/logs?api_key=s3cr3t", "https://otel.example/v1/logs?api_key=***"),
    ("https://otel.example/v1/logs?token=s3cr3t&tenant=a&debug",
     "https://otel.example/v1/logs?token=***&tenant=***&***"),
    ("https://otel.example/v1/logs?s3cr3t", "https://otel.example/v1/logs?***"),
    ("https://otel.example/v1/logs?a=1#s3cr3t", "https://otel.example/v1/logs?a=***#***"),
    ("https://u:s3cr3t@otel.example/v1/logs?k=s3cr3t", "https://otel.example/v1/logs?k=***"),
])
def test_an_endpoint_is_shown_with_its_query_names_only(url: str, shown: str) -> None:
    from collector.endpoint_url import shown_endpoint

    assert shown_endpoint(url) == shown
    assert ForwardSettings(endpoint=url).shown_endpoint == shown


@pytest.mark.parametrize("timeout", [0.5, 3.0])
def test_a_connection_failure_naming_the_url_hides_its_query_values(
        store: Store, caplog: pytest.LogCaptureFixture, timeout: float) -> None:
    """requests names the URL it could not reach, query included: a receiver's key
    reached the log and stats' last_error with it. Within one export the exporter also
    retries a connection failure while its timeout allows (the default forward_timeout,
    10 s, always does; 0.5 s leaves no room) and logs each retry itself, quoting that
    error: the key reached the collector's log by that line too."""
    write(store, 1)
    fwd = forwarding_to(store, "http://127.0.0.1:9/v1/logs?api_key=s3cr3t", timeout=timeout)
    with caplog.at_level(logging.DEBUG):
        fwd.start()
        try:
            wait_until(lambda: fwd.stats()["failures"] >= 1, 20, "a failed export")
        finally:
            fwd.stop()
    if timeout > 1:
        assert "Transient error" in caplog.text  # the exporter's retry line was logged
    assert "api_key=***" in caplog.text  # the failure is logged, the endpoint named
    assert "s3cr3t" not in caplog.text
    assert "s3cr3t" not in fwd.stats()["last_error"] and "s3cr3t" not in str(fwd.stats())


def test_a_checkpoint_naming_a_query_key_in_clear_keeps_its_position_without_it(
        store: Store, receiver: OTLPReceiver) -> None:
    """An older version wrote the endpoint whole, a key in its query included. The file
    is rewritten at start with the names only, and still names that endpoint (by a
    salted digest): the position is kept, and another key is another endpoint, as
    before (its records all sent from forward_from)."""
    write(store, 6)
    keyed = f"{receiver.endpoint}?api_key=s3cr3t"
    path = leave_checkpoint(store, keyed, 4)
    fwd = forwarder(store, receiver, endpoint=keyed)
    saved = json.loads(path.read_text())
    assert "s3cr3t" not in path.read_text()  # at start: not only at the next save
    assert saved["endpoint"] == f"{receiver.endpoint}?api_key=***"
    while fwd.step():
        pass
    assert receiver.seqs() == [5, 6]
    again = forwarder(store, receiver, endpoint=keyed)  # the new file names it too
    assert again.checkpoint.position(keyed) == 6
    assert again.checkpoint.position(f"{receiver.endpoint}?api_key=0ther") is None


def test_endpoints_are_told_apart_by_what_names_another_server() -> None:
    from collector.forward_checkpoint import endpoint_key

    assert endpoint_key("https://Collector.example:443/v1/logs") == \
        endpoint_key("https://collector.example/v1/logs")
    assert endpoint_key("http://u:p@[::1]:80/v1/logs") == endpoint_key("http://[::1]/v1/logs")
    for other in ("https://collector.example:4318/v1/logs", "http://collector.example/v1/logs",
                  "https://collector.example/v1/Logs", "https://collector.example/v1/logs?x=1"):
        assert endpoint_key(other) != endpoint_key("https://collector.example/v1/logs")


def test_a_stop_cuts_off_an_export_its_endpoint_does_not_answer(store: Store) -> None:
    """stop() waited the whole drain timeout for an export to a dead (black-hole)
    endpoint, after the ingest's and the API's own waits: the collector's stop could
    pass a service manager's limit (a lifecycle review). It waits STOP_GRACE, then cuts
    the request off; the batch is sent again at the next start."""
    import time

    endpoint = TricklingEndpoint()  # its first connection never answers in full
    write(store, 3)
    fwd = forwarding_to(store, endpoint.url, timeout=30.0)
    try:
        fwd.start()
        wait_until(lambda: endpoint.connections >= 1, timeout=10)
        time.sleep(0.3)  # the export is waiting on its answer
        started = time.monotonic()
        fwd.stop(timeout=10)
        assert time.monotonic() - started < 3
        assert endpoint.cut_off.wait(5)
        assert fwd.stats()["checkpoint_seq"] == 0  # not acknowledged: sent again later
    finally:
        endpoint.close()


def test_a_receivers_words_are_logged_on_one_line(store: Store, receiver: OTLPReceiver,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The reason a receiver gives for rejecting records is its own text: logged raw,
    its line break wrote a line of the receiver's choosing into the collector's log."""
    import logging

    write(store, 4)
    receiver.partial.append((1, "too long\nforwarder: all records accepted\x1b[2K"))
    fwd = forwarder(store, receiver)
    with caplog.at_level(logging.ERROR, "collector.forward"):
        fwd.step()
    [said] = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert "\n" not in said and "\x1b" not in said
    assert said.endswith("too long\\nforwarder: all records accepted\\x1b[2K")


def test_a_stop_ends_the_exporters_wait_for_a_retry_after(store: Store,
                                                          receiver: OTLPReceiver) -> None:
    """The exporter waits a Retry-After that fits in forward_timeout before its own
    retry. stop() cut off a request in flight, not that wait: it waited it out (up to
    forward_timeout after STOP_GRACE), and the exporter sent the batch again after
    the stop had begun."""
    write(store, 2)
    receiver.refuse_next(1, 503, Retry_After="5")
    fwd = forwarder(store, receiver, timeout=10.0)
    fwd.start()
    try:
        wait_until(lambda: receiver.refused == 1, 10, "the 503 asking for 5 s")
    finally:
        fwd.stop(timeout=10)
    assert receiver.seqs() == []  # no request once stopping
    assert fwd.stats()["state"] == "stopped" and fwd.stats()["checkpoint_seq"] == 0


@pytest.mark.parametrize("value", ["s3cr3t", "ab(cd)ef", "ab'cd\"ef", "a%20b"])
def test_a_query_value_quoted_in_free_text_is_hidden_whole(value: str) -> None:
    """An HTTP library's error text quotes the URL: the value was hidden up to its first
    quote or parenthesis, the rest shown (``api_key=***(cd``; a review)."""
    from collector.endpoint_url import hide_query_values

    text = (f"HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
            f"/v1/logs?tenant=t&api_key={value} (Caused by NewConnectionError('refused'))")
    hidden = hide_query_values(text)
    assert value not in hidden and value[2:] not in hidden, hidden
    assert "url: /v1/logs?tenant=***&api_key=*** (Caused by" in hidden, hidden


@pytest.mark.parametrize("text", [
    ("HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
     "/v1/logs?s3cr3t (Caused by NewConnectionError('refused'))"),
    '127.0.0.1:9 "POST /v1/logs?tenant=t&s3cr3t HTTP/1.1" 401 0',  # urllib3 at DEBUG
])
def test_a_query_value_without_a_name_quoted_in_free_text_is_hidden(text: str) -> None:
    """An endpoint whose key is the query itself (``?s3cr3t``): ``shown_endpoint`` hides
    it (``?***``), but in an HTTP library's text it was shown whole (a review)."""
    from collector.endpoint_url import hide_query_values

    hidden = hide_query_values(text)
    assert "s3cr3t" not in hidden, hidden
    assert "/v1/logs?" in hidden and "***" in hidden, hidden


def forward_failures_said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "collector.forward" and " failed (" in r.getMessage()]


def test_a_new_outage_is_logged_at_its_first_failure(store: Store, receiver: OTLPReceiver,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Failures are logged at 1, 2, 4, ... of an outage. Counted over the process's
    life, a second outage after an earlier one of 4 failures was first said at its 4th
    (the 8th in all): after a few outages, a new one stayed silent for hours."""
    write(store, 1)
    receiver.refuse_next(4, 503)
    fwd = forwarder(store, receiver)
    with caplog.at_level(logging.INFO, "collector.forward"):
        fwd.start()
        try:
            receiver.wait_for(1)
            receiver.refuse_next(1, 503)
            write(store, 1, start=2)
            fwd.wake()
            receiver.wait_for(2)
        finally:
            fwd.stop()
    assert fwd.stats()["failures"] == 5
    said = forward_failures_said(caplog)
    assert len(said) == 4  # the 1st, 2nd and 4th of the first outage, the 1st of the next
    assert "1 in a row" in said[-1]
    assert sum("accepted again" in r.getMessage() for r in caplog.records) == 2


def test_a_long_outage_does_not_flood_the_log_with_the_exporters_lines(
        store: Store, receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture) -> None:
    """The OTLP exporter logs each failed export itself (a 503 that says Retry-After:
    a line at each of its retries and one when it gives up): two lines per retry of the
    forwarder, thousands a day over an outage, around the forwarder's own 1, 2, 4, ..."""
    write(store, 1)
    receiver.refuse_next(10**6, 503, Retry_After="0")
    fwd = forwarder(store, receiver)
    with caplog.at_level(logging.INFO):
        fwd.start()
        try:
            wait_until(lambda: fwd.stats()["failures"] >= 64, 30, "64 failed exports")
        finally:
            fwd.stop()
    exporters = [r for r in caplog.records if r.name.startswith("opentelemetry.exporter")]
    assert exporters  # the first failure's lines say what the exporter saw
    # Said with the forwarder's own lines only (at 1, 2, 4, ..., 64: 7 exports).
    assert len(exporters) <= 2 * len(forward_failures_said(caplog))


def test_records_retention_deletes_during_an_outage_are_counted_while_it_lasts(
        tmp_path: Path, receiver: OTLPReceiver) -> None:
    """Counted only once the checkpoint passed them, the records retention deleted
    while the receiver was down showed as none (skipped 0, no line in the log) for as
    long as the outage lasted; after it, every record still stored arrives."""
    from tests.collector.storage_helpers import events, open_store

    receiver.refuse_next(10**6, 503)
    data_dir = tmp_path / "data"
    with open_store(data_dir, max_segment_bytes=4096, retention_bytes=9000) as store:
        fwd = Forwarder(data_dir, settings(receiver))
        fwd.start()
        try:
            for _ in range(10):
                store.write(events(8))
            wait_until(lambda: store.stats()["retention_deleted"] >= 3, 20, "retention")
            fwd.wake()
            wait_until(lambda: fwd.stats()["skipped"] > 0, 10, "the deleted records counted")
            assert fwd.stats()["forwarded"] == 0 and receiver.seqs() == []
            receiver.accept_again()
            wait_until(lambda: fwd.stats()["lag_events"] == 0 and fwd.stats()["forwarded"],
                       20, "caught up")
        finally:
            fwd.stop()
        stats = fwd.stats()
    seqs = sorted(set(receiver.seqs()))
    assert seqs == list(range(seqs[0], 81))  # none missing after the deleted ones
    assert stats["skipped"] == seqs[0] - 1  # each deleted one counted, once


def test_records_before_one_the_receiver_refuses_as_bad_are_delivered(
        store: Store, receiver: OTLPReceiver) -> None:
    """A receiver answers 400 to a batch holding a record it cannot take. The whole
    batch was retried for ever: the good records before that one never arrived either,
    and last_error named the batch, not the record. The batch is now halved at each 400
    down to the record refused, which is retried alone, never skipped."""
    write(store, 8)
    receiver.poison = {6}
    fwd = forwarder(store, receiver, batch_size=8)
    fwd.start()
    try:
        receiver.wait_for(5)
        wait_until(lambda: "(seq 6-6): HTTP 400" in (fwd.stats()["last_error"] or ""), 10,
                   "the refused record named")
        receiver.poison = set()  # the receiver fixed: the record goes, and those after it
        receiver.wait_for(8)
        wait_until(lambda: fwd.stats()["lag_events"] == 0, 10, "caught up")
    finally:
        fwd.stop()
    assert sorted(set(receiver.seqs())) == list(range(1, 9))
    assert fwd.stats()["skipped"] == fwd.stats()["rejected"] == 0


def test_a_body_limit_answered_400_narrows_the_batches_once_not_at_every_batch(
        store: Store, receiver: OTLPReceiver) -> None:
    """Some receivers answer a body over their limit with 400, not 413. The batch was
    halved down to a size that passed, and the next batch was full again: refused,
    halved, refused... at every batch, for good (a failure and its backoff, an error
    line and an "accepted again" line each time). The size that passed is kept, as
    after a 413."""
    write(store, 32, target="x" * 2048)
    receiver.max_body = 20_000  # 4 records (about 4.5 KB of request each)
    receiver.too_large_status = 400
    fwd = forwarder(store, receiver, batch_size=16)
    step_until(fwd, lambda: len(set(receiver.seqs())), 32, 40, ExportFailed)
    assert sorted(receiver.seqs()) == list(range(1, 33))
    assert receiver.too_large == 2  # 16 refused, then 8; 4 at a time from then on


def test_batches_narrowed_by_400s_grow_back_to_full(store: Store,
                                                    receiver: OTLPReceiver) -> None:
    """The size a 400 narrowed the batches to is kept while exports pass at it, and
    doubled again after a few: a receiver that answered 400 a few times while it was
    being set up must not leave the forwarder at one record per export for good."""
    write(store, 80)
    receiver.refuse_next(3, 400)  # 8, 4 and 2 records refused: 1 passes
    fwd = forwarder(store, receiver, batch_size=8)
    step_until(fwd, lambda: len(receiver.seqs()), 80, 60, ExportFailed)
    assert receiver.seqs() == list(range(1, 81))  # none sent twice
    sizes = [len(request.resource_logs[0].scope_logs[0].log_records)
             for request in receiver.requests]
    assert sizes[0] == 1 and sizes[-2] == 8, sizes  # (the last: what was left)


def test_an_exporter_line_muted_does_not_hide_the_next_one_said(
        caplog: pytest.LogCaptureFixture) -> None:
    """The exporter's logger drops a line the same as its previous one within 20 s
    (its DuplicateFilter, which ran before the forwarder's muting): a muted line (the
    3rd failure's) counted as the previous one, and the line of the failure said next
    (the 4th) was dropped as its duplicate."""
    from opentelemetry.exporter.otlp.proto.http import _log_exporter

    from collector.otlp_http import exporter_lines

    logger = logging.getLogger(_log_exporter.__name__)
    with caplog.at_level(logging.ERROR, logger.name):
        with exporter_lines(False):
            logger.error("Failed to export %s batch code: %s", "logs", 503)
        with exporter_lines(True):
            logger.error("Failed to export %s batch code: %s", "logs", 503)
    said = [r for r in caplog.records if r.name == logger.name]
    assert len(said) == 1


def test_a_size_narrowed_by_400s_doubles_after_8_passes_then_after_16_once_refused() -> None:
    """docs/shipping.md, "Bad request (400)": the size accepted is kept, doubled after 8
    exports accepted in a row at it, then after 16 if the larger size was refused."""
    from collector.forward_batch_size import PROBE_AFTER, BatchSize

    size = BatchSize(ForwardSettings(endpoint="http://127.0.0.1:1/v1/logs", batch_size=16))
    size.bad_request(16)
    size.bad_request(8)
    assert size.limit(100) == 4
    for _ in range(PROBE_AFTER - 1):
        size.accepted(4)
    assert size.limit(100) == 4  # not yet
    size.accepted(4)
    assert size.limit(100) == 8  # doubled after 8 in a row
    size.bad_request(8)  # the larger size refused: back to 4, tried after twice as many
    assert size.limit(100) == 4
    for _ in range(2 * PROBE_AFTER - 1):
        size.accepted(4)
    assert size.limit(100) == 4
    size.accepted(4)
    assert size.limit(100) == 8
    for _ in range(2 * PROBE_AFTER):
        size.accepted(8)
    assert size.limit(100) == 16  # back to forward_batch


def test_a_refused_read_of_the_audit_log_is_forwarded_as_a_warning() -> None:
    """The app's denials are WARN; the collector's own refusals of reads were INFO."""
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from collector.otlp_records import to_log_records

    records = [{**event(1), "seq": 1},
               {**event(2, type="audit_log_access_denied", principal="",
                        status='{"status":401,"reason":"unknown token"}'), "seq": 2}]
    batch = to_log_records(records, Resource.create({}), InstrumentationScope("t"))
    assert [r.log_record.severity_number for r in batch] == [SeverityNumber.INFO,
                                                             SeverityNumber.WARN]
