"""Collector-side validation of schema v1 events: what is accepted, and the reason given
for each kind of bad event."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from audit_middleware.event import FIELDS, AuditEvent
from audit_middleware.testing import capture_audit_events, reset_configuration
from collector.validation import Validator, event_id


def good(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "v": 1, "id": "0190c5a0-1234-7abc-8def-0123456789ab", "type": "credentials_created",
        "target": "cred-1", "principal": "user-42", "status": "", "org_id": "o1",
        "org_name": "Acme", "workspace_id": "w1", "workspace_name": "Main",
        "client_ip": "203.0.113.7", "created": "2026-11-26T01:07:10.123456Z",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
    }
    record.update(changes)
    return record


validator = Validator()


@pytest.fixture
def events() -> Iterator[list[AuditEvent]]:
    with capture_audit_events() as captured:
        yield captured
    reset_configuration()


def reason(record: object) -> str:
    result = validator.validate(record)
    assert isinstance(result, str), f"expected a rejection, got {result!r}"
    return result


def test_a_valid_event_is_returned_as_is() -> None:
    record = good()
    assert validator.validate(record) is record


def test_an_emitted_event_passes(events: list[AuditEvent]) -> None:
    from audit_middleware import emit

    emit("user_sign_in", "u1", principal="u1", status="password", client_ip="::1")
    assert validator.parse(events[0].to_json_line()) == events[0].to_dict()


def test_peer_ip_is_the_one_optional_field() -> None:
    record = good(peer_ip="10.0.0.1")
    assert validator.validate(record) is record
    assert "peer_ip" in reason(good(peer_ip=""))
    assert "peer_ip" in reason(good(peer_ip=7))


def test_fields_in_another_order_are_put_in_schema_order() -> None:
    shuffled = dict(reversed(list(good(peer_ip="10.0.0.1").items())))
    result = validator.validate(shuffled)
    assert isinstance(result, dict)
    assert list(result) == [*FIELDS, "peer_ip"]


def test_unknown_app_defined_types_are_allowed_when_well_formed() -> None:
    record = good(type="report_exported")
    assert validator.validate(record) is record


def test_empty_strings_are_allowed_where_the_schema_allows_them() -> None:
    record = good(principal="system", client_ip="", org_id="", org_name="", trace_id="",
                  span_id="", target="")
    assert validator.validate(record) is record


@pytest.mark.parametrize(("record", "expected"), [
    ([1, 2], "JSON object"),
    ("text", "JSON object"),
    (None, "JSON object"),
    ({k: v for k, v in good().items() if k != "span_id"}, "missing field(s) span_id"),
    (good(extra="x"), "unknown field(s) 'extra'"),
    (good(v=2), "'v' must be 1"),
    (good(v=True), "'v' must be 1"),
    (good(v="1"), "'v' must be 1"),
    (good(id="not-a-uuid"), "'id' must be a UUID"),
    (good(id="0190C5A0-1234-7ABC-8DEF-0123456789AB"), "'id' must be a UUID"),
    (good(id=12), "'id' must be a UUID"),
    (good(type="Credentials Created"), "'type' must be"),
    (good(type="x" * 65), "'type' must be"),
    (good(type=""), "'type' must be"),
    (good(type=None), "'type' must be"),
    (good(target=5), "'target' must be a string"),
    (good(principal=None), "'principal' must be a string"),
    (good(org_name=["a"]), "'org_name' must be a string"),
    (good(status="x" * 4097), "'status' is 4097 characters, over the cap of 4096"),
    (good(client_ip=123), "'client_ip'"),
    (good(client_ip="x" * 65), "'client_ip'"),
    (good(created="2026-11-26 01:07:10"), "'created' must be RFC 3339"),
    (good(created="2026-11-26T01:07:10Z"), "'created' must be RFC 3339"),
    (good(created="2026-11-26T01:07:10.123456+00:00"), "'created' must be RFC 3339"),
    (good(created="2026-02-30T01:07:10.123456Z"), "'created' must be RFC 3339"),
    (good(created="2026-11-26T25:07:10.123456Z"), "'created' must be RFC 3339"),
    # Newer Pythons' fromisoformat reads T24:00:00 as the next midnight: refused here.
    (good(created="2026-11-26T24:00:00.000000Z"), "'created' must be RFC 3339"),
    (good(created="２０２６-11-26T01:07:10.123456Z"), "'created' must be RFC 3339"),
    (good(created=1700000000), "'created' must be RFC 3339"),
    # Years whose nanoseconds do not fit a signed 64-bit count: OTLP and most stores
    # cannot carry them (one stalled the forwarder for good).
    (good(created="2600-01-01T00:00:00.000000Z"), "must be a time from 1970 to 2261"),
    (good(created="1969-12-31T23:59:59.999999Z"), "must be a time from 1970 to 2261"),
    (good(created="0001-01-01T00:00:00.000000Z"), "is the sender's clock right?"),
    (good(trace_id="xyz"), "'trace_id' must be 32"),
    (good(trace_id="4BF92F3577B34DA6A3CE929D0E0E4736"), "'trace_id' must be 32"),
    (good(span_id="00f067aa0ba902b"), "'span_id' must be 16"),
])
def test_rejection_reasons_name_the_problem(record: object, expected: str) -> None:
    assert expected in reason(record)


def test_bad_json_lines_are_rejected_with_a_reason() -> None:
    for line in (b"", b"{", b"\xff", b'{"v": 1,}', b'"\\ud800"'):
        result = validator.parse(line)
        assert isinstance(result, str) and "not valid JSON" in result


def test_oversized_lines_are_rejected_before_parsing() -> None:
    result = validator.parse(b" " * (300 * 1024))
    assert isinstance(result, str) and "over the limit" in result


def test_a_lower_field_cap_is_configurable() -> None:
    assert "over the cap of 100" in Validator(max_field_length=100).validate(
        good(target="t" * 101))


def test_the_id_of_a_rejected_line_is_reported_when_readable() -> None:
    assert event_id(orjson.dumps(good(v=2))) == good()["id"]
    assert event_id(b"garbage") is None
    assert event_id(b"[1]") is None
    assert event_id(b'{"id": 5}') is None


@pytest.mark.parametrize("created", ["1970-01-01T00:00:00.000000Z",
                                     "2261-12-31T23:59:59.999999Z"])
def test_the_first_and_last_years_ingest_takes(created: str) -> None:
    assert not isinstance(validator.validate(good(created=created)), str)
