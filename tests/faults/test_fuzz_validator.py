"""The collector's event validator and the wire decoders fuzzed in-process with
Hypothesis: any JSON value in any field, any bytes on a line, is answered with a record
or a reason; nothing raises (on the socket an exception closed the connection without
an answer, over HTTP it was a 500)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_middleware.event import FIELDS, OPTIONAL_FIELDS, TEXT_FIELDS
from audit_middleware.wire import WireError, decode_batch
from collector.storage.records import encode_events
from collector.validation import Validator, event_id
from tests.faults.fleet import scaled
from tests.faults.wire_strategies import JSON_VALUES, TEXT, event_lines, valid_event

EXAMPLES = scaled(1_000, 50_000)
pytestmark = pytest.mark.timeout(scaled(300, 3600))
NAMES = st.sampled_from([*FIELDS, *OPTIONAL_FIELDS, "seq", "chain"]) | st.text(max_size=12)


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(st.dictionaries(NAMES, JSON_VALUES | TEXT, max_size=4), st.lists(NAMES, max_size=3))
def test_any_value_in_any_field_gets_a_record_or_a_reason(changes: dict, dropped: list
                                                           ) -> None:
    event = {**valid_event(), **changes}
    for name in dropped:
        event.pop(name, None)
    result = Validator().validate(event)
    assert isinstance(result, (dict, str))
    if isinstance(result, dict):
        assert list(result)[:len(FIELDS)] == list(FIELDS)


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(event_lines() | st.binary(max_size=300))
def test_any_line_gets_a_record_or_a_reason(line: bytes) -> None:
    assert isinstance(Validator().parse(line), (dict, str))
    ident = event_id(line)
    assert ident is None or isinstance(ident, str)


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(st.binary(max_size=400) | st.lists(event_lines(), max_size=4).map(
    lambda lines: b"\0\0\0\1" + orjson.dumps({"source": "s", "seqs": list(range(
        1, len(lines) + 1))}) + b"\n" + b"".join(line + b"\n" for line in lines)))
def test_any_batch_payload_decodes_or_is_a_wire_error(payload: bytes) -> None:
    try:
        batch = decode_batch(payload)
    except WireError:
        return
    assert len(batch.lines) == len(batch.seqs)


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from([*TEXT_FIELDS, "client_ip"]), TEXT | st.text(max_size=64),
                       max_size=8))
def test_what_the_validator_accepts_the_store_can_encode(changes: dict) -> None:
    record = Validator().validate({**valid_event(), **changes})
    if isinstance(record, dict):
        encoded = encode_events([record])  # raises StorageError if it cannot
        assert encoded.ids == [record["id"]]


def test_a_nul_in_client_ip_is_stored_not_a_storage_failure() -> None:
    """Such an event failed its whole batch as 'storage unavailable': its shipper then
    retried the batch, and everything spooled behind it, forever."""
    for ip in ("a\x00b", "10.0.0.1\x00", "::1\x00"):
        assert encode_events([{**valid_event(), "client_ip": ip}]).ids


def test_an_unhashable_type_is_a_reason_not_an_exception() -> None:
    for value in ([], {}, ["credentials_created"]):
        assert "field 'type'" in str(Validator().validate({**valid_event(), "type": value}))
