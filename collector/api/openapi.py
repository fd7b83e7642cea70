"""The OpenAPI 3.1 description of the query API, written out by hand: the API is small,
and a hand-written description says what each filter accepts, which is what a client
generated from it needs to know."""

from __future__ import annotations

from typing import Any, Final

from audit_middleware.event import FIELDS
from collector import http_ingest
from collector.storage import loss_acks

from .params import DEFAULT_LIMIT, MAX_LIMIT

_TIME_FORMS: Final = ("RFC 3339 (2026-11-26T01:07:10Z, 2026-11-26), the seed's "
                      "YYYY-MM-DD-HH-MM-SS in UTC (2026-11-26-01-07-10), or an age such "
                      "as 15m, 24h, 7d")


def _param(name: str, description: str, *, schema: dict[str, Any] | None = None,
           example: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "in": "query", "required": False,
                         "description": description, "schema": schema or {"type": "string"}}
    if example is not None:
        p["example"] = example
    return p


_FILTERS: Final = [
    {**_param("type", "Event type or glob such as run_* (repeat, or separate with commas: "
              "any of them).", example="run_*"),
     "schema": {"type": "array", "items": {"type": "string"}}, "explode": True},
    _param("principal", "Acting user id, or system.", example="u-7"),
    _param("target", "Resource id the event is about."),
    _param("status", "Status, exact (run status, sign-in method, failed: <Exception>, ...).",
           example="failed: TimeoutError"),
    _param("org", "Organization id."),
    _param("org_name", "Organization name, exact: the name the event carried (events of an "
           "organization renamed since keep their old name).", example="Acme"),
    _param("workspace", "Workspace id."),
    _param("workspace_name", "Workspace name, exact: the name the event carried."),
    _param("client_ip", "An IP, or a CIDR block such as 10.0.0.0/8 or 2001:db8::/32."),
    _param("since", f"Events at or after this time: {_TIME_FORMS}.", example="24h"),
    _param("until", f"Events before this time (exclusive): {_TIME_FORMS}."),
    _param("order", "newest (default) or oldest first.",
           schema={"type": "string", "enum": ["newest", "oldest"], "default": "newest"}),
]

_RECORD: Final = {
    "type": "object",
    "description": "A stored audit record (docs/record.md): the schema fields, then the "
                   "storage fields seq, source, source_seq, chain, and peer_ip when "
                   "present.",
    "required": list(FIELDS),
    "properties": {
        **{name: {"type": "string"} for name in FIELDS},
        "v": {"type": "integer", "const": 1},
        "created": {"type": "string", "format": "date-time"},
        "seq": {"type": "integer"},
        "source": {"type": "string"},
        "source_seq": {"type": "integer"},
        "chain": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                  "description": "record hash chain (docs/integrity.md)"},
        "peer_ip": {"type": "string"},
    },
    "additionalProperties": True,
}

_ERROR: Final = {"type": "object", "required": ["error", "message"],
                 "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _unavailable(description: str) -> dict[str, Any]:
    """A 503: every one carries ``Retry-After`` (``collector.disk_calls.retry_after``)."""
    return {**_error(description), "headers": {"Retry-After": {
        "description": "Seconds to wait before asking again.",
        "schema": {"type": "integer"}}}}


#: Any request a reader's credentials are checked for (``auth.bearer_token``): the
#: field holds one credential, and of two only the first was read.
_TWO_AUTHORIZATIONS: Final = ("More than one Authorization header (whatever they hold), "
                              "error invalid_request: send one.")
_DENIED: Final = {
    "400": _error("A parameter the API cannot use; the message gives the accepted forms. "
                  "Or: " + _TWO_AUTHORIZATIONS),
    "401": _error("No credentials, or credentials that match no reader."),
    "403": _error("The reader is not root."),
    "503": _unavailable("The read could not be recorded in the audit log, or the data disk "
                        "or the index did not answer in time; nothing was read or "
                        "recorded. Try again after Retry-After seconds. Error "
                        "query_timeout: the query ran past the collector's query_timeout "
                        "and was stopped; narrow it (since/until, org, exact types)."),
}


def _export(media_type: str, what: str) -> dict[str, Any]:
    return {
        "summary": f"Export the selection as {what}",
        "description": "Every matching record, streamed (no size limit). The export is "
                       "recorded as an audit_log_exported event.",
        "operationId": f"exportAuditLogs{what.split()[0].replace('-', '').title()}",
        "parameters": _FILTERS,
        "responses": {"200": {"description": what,
                              "content": {media_type: {"schema": {"type": "string"}}}},
                      **_DENIED},
    }


SPEC: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "audit-collector query API",
        "version": "1",
        "description": "Read stored audit events. Only root readers may read; every read "
                       "is itself recorded as an audit event (audit_log_viewed, "
                       "audit_log_exported) with the reader as principal.",
    },
    "security": [{"bearer": []}, {"session": []}],
    "paths": {
        "/api/v1/audit-logs": {"get": {
            "summary": "A page of audit events",
            "description": "Newest first by default. Pass next_cursor back as cursor for "
                           "the next page: pages stay stable while new events arrive.",
            "operationId": "listAuditLogs",
            "parameters": [*_FILTERS,
                           _param("limit", f"Records per page (1-{MAX_LIMIT}).",
                                  schema={"type": "integer", "minimum": 1,
                                          "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}),
                           _param("cursor", "next_cursor of the previous page, unchanged.")],
            "responses": {"200": {"description": "One page", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Page"}}}}, **_DENIED},
        }},
        "/api/v1/audit-logs/export.csv": {"get": _export("text/csv", "CSV (the seed's columns)")},
        "/api/v1/audit-logs/export.jsonl": {"get": _export("application/x-ndjson",
                                                           "JSON-lines (stored records)")},
        "/api/v1/audit-logs/export.ocsf.jsonl": {"get": _export(
            "application/x-ndjson", "OCSF 1.3.0 events, one per line (docs/formats.md)")},
        "/api/v1/audit-logs/export.ecs.jsonl": {"get": _export(
            "application/x-ndjson", "ECS 8.17 documents, one per line (docs/formats.md)")},
        **http_ingest.OPENAPI,
        "/api/v1/audit-logs/{event_id}": {"get": {
            "summary": "One audit event by id",
            "operationId": "getAuditLog",
            "parameters": [{"name": "event_id", "in": "path", "required": True,
                            "schema": {"type": "string", "format": "uuid"}}],
            "responses": {
                "200": {"description": "The event", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Detail"}}}},
                "404": _error("No stored event has this id."), **_DENIED},
        }},
        "/api/v1/event-types": {"get": {
            "summary": "Event types: the catalogue's and the first 1,000 types stored",
            "operationId": "listEventTypes",
            "description": "Sorted. truncated: more types are stored than listed (the "
                           "type filter takes them all the same); ask again with a "
                           "prefix for the types beginning with it.",
            "parameters": [{"name": "prefix", "in": "query", "required": False,
                            "description": "Only the types beginning with this.",
                            "schema": {"type": "string", "maxLength": 64}}],
            "responses": {"200": {"description": "Type names", "content": {"application/json": {
                "schema": {"type": "object", "required": ["types", "truncated"], "properties": {
                    "types": {"type": "array", "items": {"type": "string"}},
                    "truncated": {"type": "boolean"}}}}}},
                **{k: v for k, v in _DENIED.items() if k in ("400", "401", "403")},
                "503": _unavailable("The index did not answer in time (every query "
                                    "thread busy, the listing's read held by a data disk "
                                    "that does not answer, or the listing ran past "
                                    "query_timeout): try again after Retry-After seconds.")},
        }},
        "/api/v1/sources/losses": {"get": {
            "summary": "The sources that lost events, unacknowledged losses first",
            "description": "Of the sources the store's stats report one by one (at most "
                           "1,000: those with losses first). Counts and source ids only: "
                           "not recorded as a read.",
            "operationId": "listLosses",
            "responses": {"200": {"description": "Sources with losses", "content": {
                "application/json": {"schema": {
                    "type": "object", "required": ["sources"], "properties": {
                        "sources": {"type": "array", "items": {
                            "type": "object", "properties": {
                                "source": {"type": "string"},
                                "received": {"type": "integer"},
                                "gap_events": {"type": "integer"},
                                "unreceived_tail_events": {"type": "integer"},
                                "unacknowledged_gap_events": {"type": "integer"},
                                "unacknowledged_tail_events": {"type": "integer"},
                                "acknowledged_through": {"type": "integer"},
                                "last_seen": {"type": ["string", "null"]},
                                "latest": {"type": "integer", "description":
                                           "The highest number the source is known to "
                                           "have given out: the through that "
                                           "acknowledges the losses counted here, and "
                                           "none after them."}}}},
                        "sources_total": {"type": "integer"},
                        "sources_omitted": {"type": "integer"},
                        "unacknowledged_gap_events": {"type": "integer"},
                        "unacknowledged_tail_events": {"type": "integer"}}}}}},
                "400": _error(_TWO_AUTHORIZATIONS),
                **{k: v for k, v in _DENIED.items() if k in ("401", "403")},
                "503": _unavailable("The store's figures did not come in time: the data disk "
                                    "does not answer. Try again after Retry-After "
                                    "seconds.")},
        }},
        "/api/v1/sources/acknowledge-losses": {"post": {
            "summary": "Acknowledge a source's lost events (known to an operator)",
            "description": "Losses (gap and unreceived tail events of the store's stats) of "
                           "numbers up to `through` stop counting in "
                           "unacknowledged_gap_events / unacknowledged_tail_events, what "
                           "to alert on; later losses count again. Recorded first, as "
                           "audit_loss_acknowledged with the reader as principal. The "
                           "same acknowledgement again (same reader, sources, through "
                           "and reason: a client's retry) is answered alike, and not "
                           "recorded twice.",
            "operationId": "acknowledgeLosses",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"type": "object", "required": ["reason"],
                           "additionalProperties": False, "properties": {
                               "source": {"type": "string", "description":
                                          "A source id; left out: every source with a "
                                          "loss not yet acknowledged."},
                               "reason": {"type": "string", "minLength": 1,
                                          "maxLength": loss_acks.MAX_REASON},
                               "through": {"type": "integer", "minimum": 1,
                                           "maximum": 2**63 - 1,
                                           "description": "Left out, or past it: every "
                                                          "number the source is known to "
                                                          "have given out."}}}}}},
            "responses": {
                "200": {"description": "What was acknowledged", "content": {
                    "application/json": {"schema": {
                        "type": "object", "required": ["acknowledged"], "properties": {
                            "acknowledged": {"type": "object", "description":
                                             "source -> through",
                                             "additionalProperties": {"type": "integer"}}}}}}},
                "404": _error("No source of this id is known to the store."),
                **_DENIED, "503": _unavailable("The acknowledgement could not be recorded "
                                               "or kept, so it was not made (the data "
                                               "disk did not answer in time, or another "
                                               "acknowledgement is under way). Try again "
                                               "after Retry-After seconds.")},
        }},
        "/api/v1/session": {
            "get": {"summary": "Who is signed in", "operationId": "getSession",
                    "responses": {"200": {"description": "The reader", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Me"}}}},
                        "400": _error(_TWO_AUTHORIZATIONS), "401": _DENIED["401"],
                        "403": _DENIED["403"]}},
            "post": {"summary": "Sign the panel in with a root token (sets a session cookie)",
                     "operationId": "signIn", "security": [],
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"type": "object", "required": ["token"], "properties": {
                             "token": {"type": "string"}}}}}},
                     "responses": {"200": {"description": "Signed in", "content": {
                         "application/json": {"schema": {"$ref": "#/components/schemas/Me"}}}},
                         "400": _error("A body the sign-in cannot use; the message "
                                       "says what to send."),
                         "401": _DENIED["401"], "403": _DENIED["403"]}},
            "delete": {"summary": "Sign out (ends the session)", "operationId": "signOut",
                       "security": [], "responses": {"204": {"description": "Signed out"}}},
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "A token from `audit-collector users add NAME --root`."},
            "ingestToken": {"type": "http", "scheme": "bearer",
                            "description": "The collector's shared ingest token (token_file "
                                           "or AUDIT_TOKEN), for POST /api/v1/events."},
            "session": {"type": "apiKey", "in": "cookie", "name": "audit_session",
                        "description": "The panel's session, from POST /api/v1/session."},
        },
        "schemas": {
            "Record": _RECORD,
            "Error": _ERROR,
            "Page": {"type": "object", "required": ["records", "next_cursor"], "properties": {
                "records": {"type": "array", "items": {"$ref": "#/components/schemas/Record"}},
                "next_cursor": {"type": ["string", "null"]},
                "limit": {"type": "integer"}}},
            "Detail": {"type": "object", "required": ["record", "trace_url"], "properties": {
                "record": {"$ref": "#/components/schemas/Record"},
                "trace_url": {"type": ["string", "null"], "format": "uri"}}},
            "Me": {"type": "object", "required": ["name", "root"], "properties": {
                "name": {"type": "string"}, "root": {"type": "boolean"}}},
        },
    },
}
