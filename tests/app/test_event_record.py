"""The record: schema fields in order, UUIDv7 ids, RFC 3339 dates, one escaped line."""

from __future__ import annotations

import ipaddress
import re
import uuid

import orjson
import pytest

from audit_middleware import FIELDS, AuditFieldError, configure, emit
from audit_middleware.event import AuditEvent, seed_date
from audit_middleware.sanitize import TRUNCATION_MARKER
from tests.doc_tables import table_rows

HOSTILE = [
    "line\nbreak", "carriage\rreturn", "crlf\r\n{\"v\":1,\"forged\":true}", "nul\x00byte",
    "ansi \x1b[31mred\x1b[0m \x1b]0;title\x07", "ls\u2028ps\u2029", "nel\x85", "tab\there",
    "bidi \u202e reversed", "emoji \U0001F600", "quote \" backslash \\",
    # C1 controls: CSI and OSC are the 8-bit ESC [ and ESC ], which terminals honouring C1
    # run when a record is shown with tail -f or grep (an app-side security review).
    "csi \x9b2J\x9b8m osc \x9d0;owned\x07 c1 \x80\x9f", "nbsp\xa0 and \xe9 stay",
]


def test_record_has_exactly_the_schema_fields_in_order(events: list[AuditEvent]) -> None:
    event = emit("credentials_created", "c1", principal="u1", status="ok", org_id="o1",
                 org_name="Org", workspace_id="w1", workspace_name="WS", client_ip="192.0.2.1")
    record = orjson.loads(event.to_json_line())
    assert tuple(record) == FIELDS
    assert record["v"] == 1
    assert record["type"] == "credentials_created"
    assert (record["target"], record["principal"], record["status"]) == ("c1", "u1", "ok")
    assert (record["org_id"], record["org_name"]) == ("o1", "Org")
    assert (record["workspace_id"], record["workspace_name"]) == ("w1", "WS")
    assert record["client_ip"] == "192.0.2.1"


def test_id_is_a_uuid7_ordered_by_emit_time(events: list[AuditEvent]) -> None:
    ids = [emit("team_created", str(i)).id for i in range(200)]
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_created_is_rfc3339_utc_with_microseconds(events: list[AuditEvent]) -> None:
    created = emit("team_created", "t").created
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", created)
    assert seed_date(created) == created[:10] + "-" + created[11:19].replace(":", "-")


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_stay_on_one_line_and_round_trip(
    value: str, events: list[AuditEvent]
) -> None:
    event = emit("user_updated", value, principal=value, status=value, org_name=value)
    line = event.to_json_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    text = line.decode("utf-8")
    assert len(text.splitlines()) == 1  # splitlines also splits on \r, \x85, \u2028, ...
    for raw in ("\x00", "\x1b", "\r", "\u2028", "\u2029", "\x85", "\x9b", "\x9d", "\x80",
                "\x9f"):
        assert raw not in text
    assert ("\xa0" in text) == ("\xa0" in value)  # only controls are escaped
    record = orjson.loads(line)
    assert (record["target"], record["principal"], record["status"]) == (value,) * 3


def test_megabyte_values_are_capped_and_marked(events: list[AuditEvent]) -> None:
    huge = "A" * 1_000_000 + "\n"
    line = emit("user_updated", huge, principal=huge, status=huge).to_json_line()
    record = orjson.loads(line)
    for field in ("target", "principal", "status"):
        assert len(record[field]) == 1024
        assert record[field].endswith(TRUNCATION_MARKER)
    assert len(line) < 5 * 1024


def test_cap_is_configurable(events: list[AuditEvent]) -> None:
    configure(max_field_length=64)
    assert len(emit("user_updated", "x" * 100).target) == 64
    assert len(emit("user_updated", "x" * 64).target) == 64
    assert emit("user_updated", "x" * 64).target == "x" * 64


def test_a_cap_above_the_collectors_says_so(events: list[AuditEvent],
                                            caplog: pytest.LogCaptureFixture) -> None:
    """The collector rejects a field over its own cap (4,096 by default): an app cap
    above it is allowed (the collector may be configured as high) but not silent."""
    configure(max_field_length=4096)
    assert "above the collector" not in caplog.text
    configure(max_field_length=10_000)
    assert "max_field_length=10000 is above the collector's default cap (4096)" in caplog.text


def test_ids_of_other_types_are_recorded_as_text(events: list[AuditEvent]) -> None:
    ident = uuid.uuid4()
    assert emit("user_updated", 42).target == "42"
    assert emit("user_updated", ident).target == str(ident)


@pytest.mark.parametrize("value", [object(), {"id": 1}, 1.5, b"bytes", True])
def test_objects_are_refused_not_repr_ed(value: object, events: list[AuditEvent]) -> None:
    with pytest.raises(AuditFieldError, match="target"):
        emit("user_updated", value)
    assert events == []


@pytest.mark.parametrize("value", ["not-an-ip", "x" * 100, "10.0.0.0/8", 3232235777,
                                   ipaddress.ip_network("10.0.0.0/8")])
def test_a_client_ip_that_is_no_address_is_refused(value: object,
                                                   events: list[AuditEvent]) -> None:
    """It was recorded as the client IP (the collector checks only its length), where no
    filter by address or network finds it; an ``ipaddress`` object was refused with
    "pass the resource's id"."""
    with pytest.raises(AuditFieldError, match="'client_ip' must be an IP address"):
        emit("user_updated", "u-1", principal="alice", client_ip=value)
    assert events == []


@pytest.mark.parametrize(("value", "recorded"), [
    ("198.51.100.7", "198.51.100.7"), (" 198.51.100.7 ", "198.51.100.7"), ("", ""),
    (ipaddress.ip_address("2001:db8::1"), "2001:db8::1"), ("::ffff:10.0.0.1", "10.0.0.1"),
])
def test_a_client_ip_given_is_recorded_as_an_address(value: object, recorded: str,
                                                     events: list[AuditEvent]) -> None:
    assert emit("user_updated", "u-1", principal="alice", client_ip=value).client_ip == recorded


def test_an_int_too_long_to_print_is_a_field_error_not_a_value_error() -> None:
    from audit_middleware import emit
    from audit_middleware.errors import AuditFieldError
    from audit_middleware.testing import capture_audit_events

    with capture_audit_events(), pytest.raises(AuditFieldError, match="4,300 digits"):
        emit("bucket_created", 10**5000)


def test_the_id_is_the_same_whichever_thread_reads_it_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``emit()`` returns its event while the sink's thread serializes it: both read the
    lazily made id. Its random bits were drawn at that first read, so two threads reading
    it at once each drew their own: the caller kept one id and the record stored the
    other (an end-to-end test saw one stored id that no emit() returned, and one returned
    that was never stored). Drawn when the event is made, the id is one value."""
    import threading

    from audit_middleware import event as event_module

    made = AuditEvent("team_created", "t1", "u1", "", "", "", "", "", "", 1_764_000_000 * 10**9)
    both_drawing = threading.Barrier(2, timeout=2)
    real_bits = event_module._getrandbits

    def draw_together(bits: int) -> int:
        both_drawing.wait()  # both readers past the "no id yet" check at once
        return real_bits(bits)

    monkeypatch.setattr(event_module, "_getrandbits", draw_together)
    seen: list[str] = []
    readers = [threading.Thread(target=lambda: seen.append(made.id)) for _ in range(2)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(5)
    assert len(seen) == 2 and seen[0] == seen[1] == made.id


def test_the_fields_and_their_order_are_the_design_table() -> None:
    """The design's record table (docs/architecture.md) is the contract other tools read
    the file by: a field renamed or moved in code (or in the page) is caught here."""
    rows = table_rows("docs/architecture.md", "## The event record (schema version 1)")
    documented = tuple(name.strip().strip("`") for row in rows for name in row[0].split(","))
    assert documented == FIELDS


def test_a_client_ip_given_as_the_requests_own_peer_is_recorded(
        events: list[AuditEvent]) -> None:
    """``emit(..., client_ip=request.client.host)``: under Starlette's TestClient that
    peer is ``testclient``, which the request's own events record as their client IP; the
    address check refused it, and the app's request failed (an AuditFieldError)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from audit_middleware import AuditMiddleware

    async def sign_in(request: Request) -> PlainTextResponse:
        assert request.client is not None
        emit("user_sign_in", "u-7", principal="u-7", client_ip=request.client.host)
        return PlainTextResponse("ok")

    app = AuditMiddleware(Starlette(routes=[Route("/", sign_in, methods=["POST"])]))
    assert TestClient(app).post("/").status_code == 200
    assert [e.client_ip for e in events] == ["testclient"]
