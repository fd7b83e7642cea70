"""What the forwarder reads of a receiver's answer: no more of its body than an OTLP
answer needs, and a partial success in the encoding the answer says it is in."""

from __future__ import annotations

import json
import logging

import pytest

from collector.otlp_http import MAX_ANSWER_BYTES, session_of
from collector.store import Store
from tests.otel.otlp_receiver import OTLPReceiver
from tests.otel.test_forwarder import forwarder, write


def test_a_200_whose_body_never_ends_is_an_acknowledgement_read_no_further(
        store: Store, receiver: OTLPReceiver) -> None:
    """requests read a whole answer into memory: a 200 with an endless (or a huge, or a
    gzip bomb's) body held the export until its deadline, the batch sent again, and the
    collector's memory grew with what it read. An OTLP answer is a few bytes: the body is
    read up to MAX_ANSWER_BYTES, the connection dropped, and the 200 acknowledges."""
    write(store, 3)
    receiver.answers.append(("application/x-protobuf", None))
    fwd = forwarder(store, receiver)
    try:
        assert fwd.step() == 3
        assert receiver.answer_cut.wait(10)  # the connection was dropped, not read on
        answer = session_of(fwd._exporter).last_answer
        assert answer is not None and len(answer) <= MAX_ANSWER_BYTES
        assert fwd.stats()["failures"] == 0 and fwd.stats()["rejected"] == 0
        write(store, 1, start=4)
        assert fwd.step() == 1  # the next request, on a new connection, is answered
    finally:
        fwd.stop(timeout=5)


def test_a_partial_success_answered_in_json_is_counted(
        store: Store, receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture) -> None:
    """A receiver answering in JSON (``Content-Type: application/json``), as some do
    whatever the request's encoding, had its answer parsed as protobuf, which failed:
    the records it rejected passed unseen."""
    write(store, 4)
    partial = {"partialSuccess": {"rejectedLogRecords": "2", "errorMessage": "too long"}}
    receiver.answers.append(("application/json; charset=utf-8",
                             json.dumps(partial).encode()))
    fwd = forwarder(store, receiver)
    with caplog.at_level(logging.ERROR, "collector.forward"):
        assert fwd.step() == 4
    assert fwd.stats()["rejected"] == 2
    assert "rejected 2 of the 4 records of seq 1-4: too long" in caplog.text


@pytest.mark.parametrize("content_type, body", [
    ("text/html", b"<html><body>OK</body></html>"),
    ("application/json", b"{}"),
    ("application/json", b"not json"),
    ("text/plain", b"\n\x02\x08\x05"),  # protobuf of 5 rejected, but said to be text
])
def test_a_200_whose_body_is_no_otlp_answer_rejects_nothing(
        store: Store, receiver: OTLPReceiver, content_type: str, body: bytes) -> None:
    write(store, 2)
    receiver.answers.append((content_type, body))
    fwd = forwarder(store, receiver)
    assert fwd.step() == 2
    assert (fwd.stats()["rejected"], fwd.stats()["failures"]) == (0, 0)


def test_a_receiver_saying_it_rejected_more_records_than_sent_has_them_counted_once(
        store: Store, receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture) -> None:
    """``rejected`` counts records lost: a receiver's answer rejecting 50 of a batch of
    2 counted 50 (and said so), more than the collector ever sent it."""
    write(store, 2)
    receiver.partial.append((50, "quota"))
    fwd = forwarder(store, receiver)
    with caplog.at_level(logging.ERROR, "collector.forward"):
        assert fwd.step() == 2
    assert fwd.stats()["rejected"] == 2
    assert "rejected 2 of the 2 records of seq 1-2 (it said 50): quota" in caplog.text
