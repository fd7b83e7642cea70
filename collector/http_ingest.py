"""``POST /api/v1/events``: JSON-lines ingest over HTTP, for apps in other languages,
Vector's ``http`` sink and Fluent Bit's ``http`` output.

Same rules as the socket (``docs/protocol.md``): the shared token (``Authorization:
Bearer <token>``, the collector's ``token``), each event validated on its own
(``collector.validation``), duplicates by id acknowledged as duplicates, and the answer
sent only after the good events are durably stored (fsync and index, grouped with every
other writer). The reply mirrors the wire protocol's RESULT:

    200 {"written": [ids], "duplicates": [ids], "rejected": [{"index", "id", "reason"}]}

``len(written) + len(duplicates) + len(rejected)`` is the number of events sent. A
rejected event must not be sent again. Other answers: 401 (token), 403 (no token
configured: HTTP ingest is off), 400 (a body that is not JSON lines or a JSON array),
413 (over ``max_frame`` bytes), 422 (every event rejected: nothing stored, the reasons
listed), 503 with ``Retry-After`` (the store cannot write; no room in
``max_inflight_bytes`` within ``read_timeout``; the body did not arrive within
``read_timeout``, or under the minimum rate while others waited for room: nothing
acknowledged, send again). A shipper that retries on 5xx and
429 and not on other 4xx does the right thing (a slow body is a 503, not HTTP's 408,
which some shippers do not retry: the batch would be dropped).

The body: JSON lines (one event object per line, ``application/x-ndjson``) or one JSON
array of event objects (``application/json``). The sender may name itself with
``X-Audit-Source`` (as a wire-protocol source: 1-128 of letters, digits and ``._:@+/-``);
events are stored with that source, unnumbered.

A body takes its bytes from the collector's frame budget (``collector.frame_budget``,
shared with the socket's frames) before it is read: its ``Content-Length``, or
``max_frame`` for a body without one (chunked). It gives them back once its events are
stored. Taking them and reading the body must end within ``read_timeout``, as a frame on
the socket: a slow sender held 4 MiB of the collector without a deadline. And while
other frames or bodies wait for room, a body holding room must arrive at the socket's
minimum rate (``collector.frame_rate``): trickled bodies held the budget for their whole
``read_timeout``, and the socket's apps waited behind them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from audit_middleware.wire import DEFAULT_MAX_FRAME, MAX_BATCH_EVENTS, SOURCE_PATTERN

from .disk_calls import retry_after
from .frame_budget import DEFAULT_MAX_INFLIGHT_BYTES, FrameBudget, Lease
from .frame_rate import GRACE, MIN_FRAME_RATE, RULE, FrameTooSlow, Pace, next_chunk
from .own_records import own_source, own_source_reason
from .validation import DEFAULT_MAX_FIELD_LENGTH, Validator, event_id

log = logging.getLogger("collector.ingest.http")

PATH: Final = "/api/v1/events"
DEFAULT_SOURCE: Final = "http"
#: Seconds a refused sender is told to wait (``Retry-After``): its batch, sent again
#: soon, is all that is at stake; the API's other 503s say 5 (``disk_calls.RETRY_AFTER``).
RETRY_AFTER: Final = 1


@dataclass(frozen=True)
class _Submitted:
    """A request's events handed to the store: what its answer needs, and no more."""

    source: str
    good_at: list[int]  # the request index of each event handed to the store
    rejected: list[dict[str, Any]]
    repeated: list[str]  # ids given twice in the request
    stored: Future[Any] | None  # the store's answer; None when nothing was good


@dataclass(frozen=True)
class HttpIngestSettings:
    token: str | None  # the collector's shared ingest token; None: HTTP ingest is off
    max_body: int = DEFAULT_MAX_FRAME
    max_field_length: int = DEFAULT_MAX_FIELD_LENGTH
    #: Seconds to take the body's bytes from the budget and read it, from its first byte.
    read_timeout: float = 30.0


class HttpIngest:
    """The endpoint's state: where events go, the token, the counters."""

    def __init__(self, store: Any, settings: HttpIngestSettings,
                 budget: FrameBudget | None = None, *, rate: float = MIN_FRAME_RATE,
                 grace: float = GRACE) -> None:
        """``budget``: the ingest server's (``IngestServer.budget``), or one of its own;
        ``rate`` and ``grace``: the socket's minimum rate (``collector.frame_rate``)."""
        self._store = store
        self.settings = settings
        self._rate, self._grace = rate, grace
        self._budget = budget or FrameBudget(max(DEFAULT_MAX_INFLIGHT_BYTES,
                                                 settings.max_body))
        self._token = settings.token.encode() if settings.token else b""
        self._validator = Validator(settings.max_field_length, from_clients=True)
        self.counters: Counter[str] = Counter()

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    async def handle(self, request: Request) -> Response:
        self.counters["requests"] += 1
        if not self._token:
            return _error(403, "ingest_disabled", "HTTP ingest needs the collector's shared "
                          "token: set token_file (or AUDIT_TOKEN) and send it as "
                          "'Authorization: Bearer <token>'")
        if not self._authorized(request):
            self.counters["unauthorized"] += 1
            return _error(401, "unauthorized", "send the collector's ingest token as "
                          "one Authorization header: 'Authorization: Bearer <token>'",
                          headers={"WWW-Authenticate": 'Bearer realm="audit-ingest"'})
        source = request.headers.get("x-audit-source", DEFAULT_SOURCE)
        if not SOURCE_PATTERN.fullmatch(source):
            return self._bad_request(400, "bad_source", "X-Audit-Source must be 1-128 "
                                     "characters of letters, digits and ._:@+/-")
        if own_source(source):
            return self._bad_request(400, "bad_source", own_source_reason(source))
        read = await self._read_body(request)
        if isinstance(read, Response):
            return read
        lease = read[1]
        try:
            # Parsed, validated and handed to the store at once; only the small answer
            # is kept while the store writes. The body, its lines and their dicts held
            # ~6 times the bytes the budget counts until then: a full budget of bodies
            # and a slow disk cost ~1.5 GiB, not max_inflight_bytes.
            submitted = self._ingest(read[0], source)
            del read
            if isinstance(submitted, Response):
                return submitted
            return await self._answer(submitted)
        finally:
            lease.release()  # its events stored, or refused: the bytes are free again

    def _ingest(self, body: bytes, source: str) -> _Submitted | Response:
        # As on the socket, at most MAX_BATCH_EVENTS events a request, checked before
        # anything is parsed: a body of tiny lines must not cost a dict, a reason and a
        # reply entry per line (1 MiB of "{}" lines cost ~250 MB without this).
        if _event_count_bound(body) > MAX_BATCH_EVENTS:
            return self._bad_request(413, "too_many_events", f"a request may carry at "
                                     f"most {MAX_BATCH_EVENTS} events: send smaller batches")
        items = _split(body)
        if isinstance(items, str):
            return self._bad_request(400, "bad_body", items)
        if len(items) > MAX_BATCH_EVENTS:
            return self._bad_request(413, "too_many_events", f"a request may carry at "
                                     f"most {MAX_BATCH_EVENTS} events, this one "
                                     f"{len(items)}: send smaller batches")
        return self._submit(items, source)

    def _authorized(self, request: Request) -> bool:
        # Exactly one header: of two, only the first was read, and a proxy in front that
        # checks (or appends) the last one let in a request taken on another credential.
        headers = request.headers.getlist("authorization")
        if len(headers) != 1:
            return False
        scheme, _, token = headers[0].partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._token)

    async def _read_body(self, request: Request) -> tuple[bytes, Lease] | Response:
        """The body, and its bytes taken from the budget (for the caller to give back);
        or the answer that refuses it, nothing taken."""
        limit = self.settings.max_body
        declared = request.headers.get("content-length", "")
        sized = declared.isascii() and declared.isdigit()
        if sized and int(declared) > limit:
            return self._too_large()
        # Without a length (chunked), room for the largest body it may be.
        room = int(declared) if sized else limit
        what = (f"a body of {room} bytes" if sized else
                f"a body without Content-Length (taking max_frame, {room} bytes)")
        timeout = self.settings.read_timeout
        lease: Lease | None = None
        try:
            async with asyncio.timeout(timeout):
                lease = await self._budget.take(room)
                body = await self._receive(request, room, what)
        except TimeoutError:
            if lease is None:
                self.counters["busy"] += 1
                return _error(503, "busy", f"no room within {timeout:g}s: the collector "
                              "holds max_inflight_bytes of other clients' batches; send "
                              "the events again", headers=retry_after(RETRY_AFTER))
            lease.release()
            self.counters["timeouts"] += 1
            return _error(503, "timeout", f"the body did not arrive within {timeout:g}s "
                          "(read_timeout); send it again", headers=retry_after(RETRY_AFTER))
        except FrameTooSlow as cut:
            if lease is not None:  # always: only a body being read is judged
                lease.release()
            self.counters["inflight_too_slow"] += 1
            return _error(503, "timeout", cut.message, headers=retry_after(RETRY_AFTER))
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        if isinstance(body, Response):
            lease.release()
            return body
        return body, lease

    async def _receive(self, request: Request, limit: int, what: str) -> bytes | Response:
        """The body, read at ``Pace``'s minimum rate (``what`` names it in the error)."""
        chunks: list[bytes] = []
        size = 0
        pace = Pace(self._budget, what, rate=self._rate, grace=self._grace)
        stream = request.stream()
        try:
            # Chunk by chunk: never more than the limit buffered.
            while (chunk := await next_chunk(stream, pace)) is not None:
                size += len(chunk)
                if size > limit:  # also a body longer than its Content-Length said
                    return self._too_large()
                chunks.append(chunk)
        except ClientDisconnect:
            # Not malformed (bad_requests is what a broken sender raises, an alert's
            # figure): a client gone mid-body (a timeout, a restart) resends.
            self.counters["disconnected"] += 1
            return _error(400, "bad_body", "the client went away before the body ended")
        return b"".join(chunks)

    def _bad_request(self, status: int, code: str, message: str) -> Response:
        # Every request refused whole as malformed counts, whatever the check: the
        # bad_source ones were counted nowhere, so a sender refused for its header at
        # each request showed no failure on /metrics.
        self.counters["bad_requests"] += 1
        return _error(status, code, message)

    def _too_large(self) -> Response:
        self.counters["too_large"] += 1
        return _error(413, "too_large", f"a request may carry at most "
                      f"{self.settings.max_body} bytes (max_frame): send fewer events per "
                      "request")

    def _submit(self, items: list[bytes | Any], source: str) -> _Submitted:
        """Validate ``items`` and hand the good ones to the store (encoded there, now):
        what is left to answer, nothing of the body kept."""
        good: list[dict[str, Any]] = []
        good_at: list[int] = []  # each good event's index in the request
        rejected: list[dict[str, Any]] = []
        repeated: list[str] = []  # an id twice in one request: a duplicate, as on the socket
        seen: set[str] = set()
        for index, item in enumerate(items):
            if isinstance(item, bytes):
                record = self._validator.parse(item)
                ident = event_id(item) if isinstance(record, str) else None
            else:
                record = self._validator.validate(item)
                ident = _id_of(item) if isinstance(record, str) else None
            if isinstance(record, str):
                rejected.append({"index": index, "id": ident, "reason": record})
                continue
            if record["id"] in seen:
                repeated.append(record["id"])
                continue
            seen.add(record["id"])
            good.append(record)
            good_at.append(index)
        self.counters["events_received"] += len(items)
        self.counters["events_rejected"] += len(rejected)
        if rejected:
            self._log_rejections(source, rejected)
        return _Submitted(source, good_at, rejected, repeated,
                          self._stored(good, source) if good else None)

    def _stored(self, good: list[dict[str, Any]], source: str) -> Future[Any]:
        try:
            stored: Future[Any] = self._store.submit(good, source, None,
                                                     reject_unencodable=True)
            return stored
        except Exception as exc:  # noqa: BLE001 - answered as any store failure (503)
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            return failed

    async def _answer(self, submitted: _Submitted) -> Response:
        source, good_at, rejected = submitted.source, submitted.good_at, submitted.rejected
        written: list[str] = []
        duplicates = list(submitted.repeated)
        if submitted.stored is not None:
            try:
                result = await asyncio.wrap_future(submitted.stored)
            except Exception as exc:  # noqa: BLE001 - any store failure: no ack, retryable
                self.counters["storage_errors"] += 1
                log.error("http ingest: the store failed to write %d events: %s",
                          len(good_at), exc)
                return _error(503, "storage_unavailable", f"events not stored "
                              f"({exc or type(exc).__name__}); send them again later",
                              headers=retry_after(RETRY_AFTER))
            written = list(result.written)
            duplicates = list(result.duplicates) + submitted.repeated
            if result.rejected:  # validated, yet the store cannot encode them: not retryable
                refused = [{"index": good_at[u.position], "id": u.id,
                            "reason": f"storage_error: {u.reason}"} for u in result.rejected]
                self.counters["events_rejected"] += len(refused)
                self._log_rejections(source, refused)
                rejected = sorted(rejected + refused, key=lambda r: int(r["index"]))
        self.counters["events_written"] += len(written)
        self.counters["events_duplicate"] += len(duplicates)
        body = {"written": written, "duplicates": duplicates, "rejected": rejected}
        status = 422 if rejected and not written and not duplicates else 200
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    def _log_rejections(self, source: str, rejected: list[dict[str, Any]]) -> None:
        total = self.counters["events_rejected"]
        if (total - len(rejected)).bit_length() != total.bit_length():  # 1, 2, 4, 8, ...
            first = rejected[0]
            log.warning("http ingest: rejected %d event(s) from %s, e.g. #%d: %s (%d so far)",
                        len(rejected), source, first["index"], first["reason"], total)


def _event_count_bound(body: bytes) -> int:
    """An upper bound of the events a body can hold, without parsing it: its lines, or
    for a JSON array its objects (an event holds no nested object; braces inside string
    values only make the bound looser, so the check allows twice the limit for them)."""
    stripped = body.strip()
    if stripped[:1] == b"[":
        return stripped.count(b"{") // 2
    return stripped.count(b"\n") + 1


def _split(body: bytes) -> list[bytes | Any] | str:
    """The events of a body: the elements of a JSON array (a body that is one), else
    JSON lines (blank lines skipped; a line that is not JSON is rejected on its own)."""
    stripped = body.strip()
    if not stripped:
        return "the body holds no events: send JSON lines, one event object per line"
    if stripped[:1] == b"[":
        try:
            items = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            items = None  # not one array: JSON lines, the first of which is not an event
        if isinstance(items, list):
            return items if items else "the JSON array holds no events"
    return [line for line in stripped.split(b"\n") if line.strip()]


def _id_of(item: Any) -> str | None:
    ident = item.get("id") if isinstance(item, dict) else None
    return ident if isinstance(ident, str) and len(ident) <= 64 else None


def _error(status: int, code: str, message: str, *,
           headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"error": code, "message": message}), status_code=status,
                    media_type="application/json", headers=headers)


async def _endpoint(request: Request) -> Response:
    ingest: HttpIngest | None = getattr(request.app.state, "http_ingest", None)
    if ingest is None:
        return _error(404, "not_found", "HTTP ingest is not enabled on this collector")
    return await ingest.handle(request)


def routes() -> list[Route]:
    """The ingest route. It finds its ``HttpIngest`` at ``app.state.http_ingest``."""
    return [Route(PATH, _endpoint, methods=["POST"])]


#: The OpenAPI description of the route (merged into ``collector.api.openapi``).
_RESULT_SCHEMA: Final = {"type": "object", "required": ["written", "duplicates", "rejected"],
                         "properties": {
                             "written": {"type": "array", "items": {"type": "string"}},
                             "duplicates": {"type": "array", "items": {"type": "string"}},
                             "rejected": {"type": "array", "items": {
                                 "type": "object", "required": ["index", "id", "reason"],
                                 "properties": {"index": {"type": "integer"},
                                                "id": {"type": ["string", "null"]},
                                                "reason": {"type": "string"}}}}}}
_ERROR_REPLY: Final = {"application/json": {"schema": {
    "type": "object", "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}}}
OPENAPI: Final[dict[str, Any]] = {PATH: {"post": {
    "summary": "Ingest events (JSON lines or a JSON array) with the collector's ingest token",
    "operationId": "ingestEvents",
    "description": "Same validation, dedupe and acknowledgement as the wire protocol "
                   "(docs/protocol.md): the answer comes after the events are durably "
                   "stored. A rejected event must not be sent again.",
    "security": [{"ingestToken": []}],
    "parameters": [{"name": "X-Audit-Source", "in": "header", "required": False,
                    "schema": {"type": "string", "pattern": SOURCE_PATTERN.pattern}}],
    "requestBody": {"required": True, "content": {
        "application/x-ndjson": {"schema": {"type": "string"}},
        "application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}},
    "responses": {
        "200": {"description": "Stored (written or duplicates) and rejected events",
                "content": {"application/json": {"schema": _RESULT_SCHEMA}}},
        "400": {"description": "The body holds no events", "content": _ERROR_REPLY},
        "401": {"description": "Missing or wrong ingest token, or more than one "
                               "Authorization header", "content": _ERROR_REPLY},
        "403": {"description": "HTTP ingest is off (no token configured)",
                "content": _ERROR_REPLY},
        "413": {"description": "Body over max_frame bytes", "content": _ERROR_REPLY},
        "422": {"description": "Every event was rejected (nothing stored)",
                "content": {"application/json": {"schema": _RESULT_SCHEMA}}},
        "503": {"description": "The store cannot write, no room for the body within "
                               "read_timeout (max_inflight_bytes, busy), or the body did "
                               "not arrive within read_timeout or, while other batches "
                               f"waited for room, at {RULE} (timeout): nothing "
                               "acknowledged, send again (Retry-After)",
                "content": _ERROR_REPLY},
    }}}}
