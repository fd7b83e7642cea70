"""``configure(redact_secrets=...)``: a secret passed by mistake in a free-text field
(target, principal, status, organization and workspace ids and names) is replaced with
``[redacted:<kind>]``, the rest of the text kept, before the field is capped; off by
default, and then the request path is the plain one."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

import audit_middleware
from audit_middleware import (
    AuditConfigurationError,
    AuditMiddleware,
    JsonlFileSink,
    _config,
    _redacting,
    audited,
    configure,
    emit,
    register_resource,
)
from audit_middleware.event import TEXT_FIELDS, AuditEvent
from audit_middleware.redaction import SCAN_MARGIN, Redactor
from audit_middleware.sanitize import TRUNCATION_MARKER
from audit_middleware.testing import reset_configuration

CLIENT = "198.51.100.7"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LTEifQ.c2lnbmF0dXJlLWJ5dGVz"

#: (kind, a secret of that kind, what the record holds instead)
SECRETS: list[tuple[str, str, str]] = [
    ("jwt", JWT, "[redacted:jwt]"),
    ("aws-access-key", "AKIAIOSFODNN7EXAMPLE", "[redacted:aws-access-key]"),
    ("aws-session-key", "ASIAY34FZKBOKMUTVV7A", "[redacted:aws-access-key]"),
    ("github-classic", "ghp_" + "aB3" * 12, "[redacted:github-token]"),
    ("github-oauth", "gho_" + "Zx9" * 12, "[redacted:github-token]"),
    ("github-user", "ghu_" + "k2L" * 12, "[redacted:github-token]"),
    ("github-server", "ghs_" + "q8W" * 12, "[redacted:github-token]"),
    ("github-refresh", "ghr_" + "m4N" * 12, "[redacted:github-token]"),
    ("github-pat", "github_pat_11ABCDEFG0123456789_" + "x" * 59, "[redacted:github-token]"),
    ("slack", "xoxb-1234567890-0987654321-AbCdEfGhIj", "[redacted:slack-token]"),
    ("stripe", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "[redacted:stripe-key]"),
    ("stripe-restricted", "rk_live_51H8abcdefGHIJKLmnop", "[redacted:stripe-key]"),
    ("google", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "[redacted:google-api-key]"),
    ("pem", ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA0Z3V\n"
             "-----END RSA PRIVATE KEY-----"), "[redacted:private-key]"),
    ("url-password", "postgres://bob:hunter2@db.internal:5432/app",
     "postgres://bob:[redacted:url-password]@db.internal:5432/app"),
    ("bearer", "Bearer 8f2k1x9q7w3e5r", "Bearer [redacted:bearer]"),
    ("basic", "Basic YWxpY2U6czNjcmV0", "Basic [redacted:basic]"),
    ("reader-token", "ac_0123456789abcdef_" + "Yq3-_Z" * 7 + "w",
     "[redacted:reader-token]"),
]
IDS = [kind for kind, _, _ in SECRETS]

#: What records normally hold: none of it may change.
ORDINARY = [
    "0f8fad5b-d9cb-469f-a165-70867728950e", "01936b2e-7c4f-7a3b-9e2d-4f5a6b7c8d9e",
    "3f786850e387550fdab836ed7e6dc881de23001b", "d41d8cd98f00b204e9800998ecf8427e",
    "run_1a2b", "ws_9f3c", "alice@example.org", "u-alice", "system", "acme", "Genomics",
    "/orgs/o1/workspaces/w1/runs/run_1a2b", "/invites/expired", "s3://bucket/key.txt",
    "https://example.org/reports?id=3", "git@github.com:acme/pipeline.git",
    "203.0.113.7", "2001:db8::1", "HTTP 403 on DELETE", "failed: HTTP 403",
    "failed: PermissionError", "Basic authentication failed", "Bearer token expired",
    "relaunch of run run_1a2b", "ac_name", "AKIA", "eyJ", "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
]


@pytest.fixture
def redacting(events: list[AuditEvent]) -> Iterator[list[AuditEvent]]:
    configure(redact_secrets=True)
    yield events
    reset_configuration()


def fields_of(event: AuditEvent) -> dict[str, str]:
    return {name: getattr(event, name) for name in TEXT_FIELDS}


def every_field_app(text: str) -> TestClient:
    """Each free-text field of the record carries ``text``: the target from the path
    (from a getter for a text a path cannot hold: a PEM block's line breaks), the status
    a constant of ``@audited`` (its fast path), the rest from resolvers."""
    target: Any = "target" if "\n" not in text else (lambda call: text)

    @audited("workspace_deleted", target=target, status=text)
    async def handler(request: Request) -> Response:
        return Response(status_code=204)

    app = AuditMiddleware(
        Starlette(routes=[Route("/items/{target:path}", handler, methods=["DELETE"])]),
        principal=lambda ctx: text, org=lambda ctx: (text, text),
        workspace=lambda ctx: (text, text))
    return TestClient(app, client=(CLIENT, 50000))


@pytest.mark.parametrize(("kind", "secret", "redacted"), SECRETS, ids=IDS)
def test_each_kind_is_redacted_in_each_field_of_a_request(
    redacting: list[AuditEvent], kind: str, secret: str, redacted: str
) -> None:
    text = f"invite {secret} sent"
    path = quote(text) if "\n" not in text else "pem"  # its target from a getter
    assert every_field_app(text).delete(f"/items/{path}").status_code == 204
    [event] = redacting
    assert set(fields_of(event).values()) == {f"invite {redacted} sent"}
    assert event.client_ip == CLIENT
    assert secret not in event.to_json_line().decode()


@pytest.mark.parametrize(("kind", "secret", "redacted"), SECRETS, ids=IDS)
def test_each_kind_is_redacted_in_each_field_given_to_emit(
    redacting: list[AuditEvent], kind: str, secret: str, redacted: str
) -> None:
    text = f"{secret}; more"
    emit("workspace_deleted", text, principal=text, status=text, org_id=text,
         org_name=text, workspace_id=text, workspace_name=text)
    assert set(fields_of(redacting[0]).values()) == {f"{redacted}; more"}


def test_emit_inside_a_request_redacts_its_own_and_the_requests_fields(
    redacting: list[AuditEvent]
) -> None:
    async def handler(request: Request) -> Response:
        emit("workspace_deleted", f"t {JWT}")  # the common call: the request's fields
        emit("workspace_deleted", "w1", org_name=f"o {JWT}")  # explicit ones beside
        return Response(status_code=204)

    app = AuditMiddleware(Starlette(routes=[Route("/", handler)]),
                          principal=lambda ctx: f"p {JWT}")
    assert TestClient(app).get("/").status_code == 204
    common, explicit = redacting
    assert (common.target, common.principal) == ("t [redacted:jwt]", "p [redacted:jwt]")
    assert (explicit.target, explicit.principal, explicit.org_name) == (
        "w1", "p [redacted:jwt]", "o [redacted:jwt]")


def test_a_denied_requests_path_is_redacted(redacting: list[AuditEvent]) -> None:
    register_resource("request", {"denied": "request_denied"})

    async def invite(request: Request) -> Response:
        return Response(status_code=403)

    app = AuditMiddleware(Starlette(routes=[Route("/invites/{token}", invite)]),
                          denied_event="request_denied")
    assert TestClient(app).get(f"/invites/{JWT}").status_code == 403
    [event] = redacting
    assert (event.type, event.target, event.status) == (
        "request_denied", "/invites/[redacted:jwt]", "HTTP 403 on GET")


def test_events_a_file_sink_builds_later_are_redacted(tmp_path: Path) -> None:
    """The file sink takes ``@audited``'s events as tuples (built on its thread): they
    are redacted on the request, before the tuple."""
    path = tmp_path / "audit.jsonl"
    sink = JsonlFileSink(path, fsync=False)
    configure(sink=sink, redact_secrets=True)
    try:
        assert every_field_app(f"k {JWT}").delete(f"/items/k {JWT}").status_code == 204
        assert sink.flush(10.0)
    finally:
        reset_configuration()
        sink.close()
    [record] = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert {record[name] for name in TEXT_FIELDS} == {"k [redacted:jwt]"}


def test_off_by_default_records_the_text_as_given(events: list[AuditEvent]) -> None:
    text = f"invite {JWT} sent"
    assert every_field_app(text).delete(f"/items/{text}").status_code == 204
    emit("workspace_deleted", text, principal=text, org_name=text)
    assert set(fields_of(events[0]).values()) == {text}
    assert (events[1].target, events[1].principal, events[1].org_name) == (text, text, text)


@pytest.mark.parametrize("value", [False, None])
def test_off_binds_the_plain_request_path(events: list[AuditEvent], value: Any) -> None:
    """Off, the functions the request path calls are the plain ones: no flag tested."""
    configure(redact_secrets=True)
    if value is None:
        reset_configuration()
    else:
        configure(redact_secrets=value)
    for module, name, _, plain in _redacting.SEAMS:
        assert getattr(module, name) is plain, (module.__name__, name)


def test_every_caller_of_the_request_path_is_rebound() -> None:
    """A module that imports a rebound function by name would keep the plain one."""
    rebound = {"emit_in_request", "record_in_request", "request_fields", "_text",
               "_field", "_request_fields"}
    seams = {(m.__name__.rsplit(".", 1)[-1], n) for m, n, _, _ in _redacting.SEAMS}
    package = Path(audit_middleware.__file__).parent
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "emitter":
                for alias in node.names:
                    if alias.name in rebound and source.stem != "_redacting":
                        assert (source.stem, alias.name) in seams, source


def test_extra_patterns_are_redacted_on_top_of_the_built_in_ones(
    events: list[AuditEvent]
) -> None:
    configure(redact_secrets=[r"inv_[0-9a-f]{8}", re.compile(r"cust-\d{4}")])
    emit("workspace_deleted", f"inv_1a2b3c4d for cust-0042 by {JWT}")
    assert events[0].target == "[redacted:custom] for [redacted:custom] by [redacted:jwt]"


@pytest.mark.parametrize(("value", "says"), [
    ("yes", r"got the single pattern 'yes'; pass it in a list, redact_secrets=\['yes'\]"),
    (1, r"must be True \(the built-in patterns\), False, or a list .* got 1"),
    (None, r"must be True .* got None"),
    (re.compile("x"), r"single pattern .*pass it in a list"),
    ([b"token"], r"must be a str or a compiled str pattern .* got b'token'"),
    ([re.compile(b"x")], r"must be a str or a compiled str pattern"),
    ([3], r"must be a str or a compiled str pattern .* got 3"),
    (["inv_("], r"'inv_\(' is no regular expression .*re.escape\(\)"),
    (["x*"], r"'x\*' matches the empty text, .* at least one character"),
])
def test_a_bad_option_value_says_what_to_pass(
    events: list[AuditEvent], value: Any, says: str
) -> None:
    with pytest.raises(AuditConfigurationError, match=says):
        configure(redact_secrets=value)


def test_ordinary_values_are_never_redacted() -> None:
    redact = Redactor()
    assert [v for v in ORDINARY if redact(v) != v] == []


def test_a_secret_across_the_cap_is_redacted_whole(redacting: list[AuditEvent]) -> None:
    """Redacted before the cap: a cut JWT would no longer match, its start recorded."""
    configure(max_field_length=64)
    emit("workspace_deleted", "/" * 40 + JWT)
    assert redacting[0].target == "/" * 40 + "[redacted:jwt]"


def test_a_marker_longer_than_its_secret_is_capped_as_usual(
    redacting: list[AuditEvent]
) -> None:
    configure(max_field_length=32)
    text = "a" * 12 + " Basic dXM6cA=="  # 27 characters; the marker makes it 35
    emit("workspace_deleted", text)
    target = redacting[0].target
    assert len(target) == 32 and target.endswith(TRUNCATION_MARKER)
    assert target == "a" * 12 + " Basic [" + TRUNCATION_MARKER
    assert redacting[0].to_json_line().count(b"\n") == 1


@pytest.mark.timeout(20)  # a guard against a hang, not a timing: it takes milliseconds
@pytest.mark.parametrize("repeated", ["-eyJ", "_eyJ", "eyJ_"])
def test_a_field_of_repeated_jwt_starts_is_scanned_in_linear_time(repeated: str) -> None:
    """Each ``eyJ`` after a ``-`` or ``_`` starts a JWT: a regex search from each to the
    end of the run took the square of the field's length (~80 ms at the default cap,
    minutes for a megabyte under a raised one), on the request's thread."""
    text = repeated * 250_000
    assert Redactor()(text) == text
    assert Redactor()(text + f" {JWT}") == text + " [redacted:jwt]"


def test_a_field_cut_past_the_scan_window_is_marked_truncated(
    redacting: list[AuditEvent]
) -> None:
    """What lies past the cap plus the margin is dropped before the scan: when the
    secret's marker leaves the rest shorter than the cap, the record still says so."""
    emit("workspace_deleted", "Bearer " + "a1" * SCAN_MARGIN + " by alice")
    assert redacting[0].target == "Bearer [redacted:bearer]" + TRUNCATION_MARKER


def test_a_jwt_longer_than_the_scan_window_is_redacted(redacting: list[AuditEvent]) -> None:
    """A JWT whose payload runs past the window is cut before its signature: its header
    and payload are a JWT's all the same."""
    configure(max_field_length=64)
    header, payload, _ = JWT.split(".")
    emit("workspace_deleted", f"/t/{header}.{payload}{'A' * SCAN_MARGIN * 2}.sig")
    assert redacting[0].target == "/t/[redacted:jwt]" + TRUNCATION_MARKER


def test_an_event_while_redaction_is_turned_off_is_recorded(
    redacting: list[AuditEvent]
) -> None:
    """configure(redact_secrets=False) clears the redactor, then binds the plain path:
    an event between the two is recorded (as it is), not lost to an AssertionError."""
    _config.settings.redactor = None  # the state between configure()'s two steps
    emit("workspace_deleted", f"t {JWT}", principal="alice")
    assert redacting[0].target == f"t {JWT}"
