"""The query API and admin panel as a Starlette application.

    app = create_app(ApiSettings(data_dir), store)   # store: where reads are recorded

``audit-collector serve`` runs it next to the ingest server (``collector.api.server``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from collector import health, http_ingest, metrics
from collector.disk_calls import DiskLate, retry_after
from collector.query import IndexUnavailableError
from collector.readers import ReaderError, Readers
from collector.storage.errors import IndexOutOfDateError, StorageError
from collector.storage.filters import QueryError
from collector.storage.regular_files import NotRegularFileError
from collector.storage.time_limit import QueryTimeoutError

from . import routes
from .auth import AuthError, ReadersLate, Sessions
from .context import STATIC_DIR, Api, ApiSettings
from .headers import SecurityHeaders, security_headers
from .hosts import LoopbackHostCheck
from .params import ParamError
from .queries import QueriesHung
from .reads import ReadNotRecordedError, Submitter

log = logging.getLogger("collector.api")

#: The sign-in: the one request whose body is read before any credential is checked
#: (``server.ApiServer``'s guard gives such bodies a deadline).
SIGN_IN_PATH: Final = "/api/v1/session"

#: What ``/static`` serves: the panel's script and style, never its page.
ASSET_SUFFIXES: Final = (".js", ".css")


class PanelAssets(StaticFiles):
    """The panel's assets. Its page is served only by ``routes.panel``, which refuses a
    selection chosen by another site's link: served here too, ``/static/panel.html?
    principal=...`` ran that selection as the signed-in reader (and recorded it as
    their read) without the check. An allow-list, so a page added to ``static/`` later
    is not exposed either."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        # ``path`` is already normalized ("x.js/../panel.html" is "panel.html").
        if not path.endswith(ASSET_SUFFIXES):
            raise HTTPException(status_code=404)
        return await super().get_response(path, scope)


def read_route(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
    """A route for an audit-log read: GET only. Starlette serves HEAD wherever GET is
    allowed by running the GET endpoint and dropping the body: a HEAD ran the query
    (an export streamed the whole selection to nobody) and was recorded as a read of
    what it never sent. Refused instead (405, ``Allow: GET``): nothing run or recorded.
    All of them, exports and ``{event_id}`` alike: a HEAD of ``export.csv`` must not
    fall through to ``{event_id}``."""
    route = Route(path, endpoint, methods=["GET"])
    assert route.methods is not None
    route.methods.discard("HEAD")
    return route


ROUTES = [
    read_route("/api/v1/audit-logs", routes.list_audit_logs),
    read_route("/api/v1/audit-logs/export.csv", routes.export_csv),
    read_route("/api/v1/audit-logs/export.jsonl", routes.export_jsonl),
    read_route("/api/v1/audit-logs/export.ocsf.jsonl", routes.export_ocsf),
    read_route("/api/v1/audit-logs/export.ecs.jsonl", routes.export_ecs),
    read_route("/api/v1/audit-logs/{event_id}", routes.get_audit_log),
    Route("/api/v1/event-types", routes.event_types, methods=["GET"]),
    Route("/api/v1/sources/losses", routes.list_losses, methods=["GET"]),
    Route("/api/v1/sources/acknowledge-losses", routes.acknowledge_losses, methods=["POST"]),
    Route(SIGN_IN_PATH, routes.who_am_i, methods=["GET"]),
    Route(SIGN_IN_PATH, routes.sign_in, methods=["POST"]),
    Route(SIGN_IN_PATH, routes.sign_out, methods=["DELETE"]),
    Route("/api/v1/openapi.json", routes.openapi, methods=["GET"]),
    *http_ingest.routes(),  # POST /api/v1/events, when serve attaches its HttpIngest
    *metrics.routes(),  # GET /metrics (Prometheus), when serve attaches its Metrics
    *health.routes(),  # GET /healthz (readiness), from serve's Health once attached
    Route("/", routes.to_panel, methods=["GET"]),
    Route("/admin", routes.to_panel, methods=["GET"]),
    Route("/admin/audit-logs", routes.panel, methods=["GET"]),
    Mount("/static", PanelAssets(directory=STATIC_DIR), name="static"),
]


def create_app(settings: ApiSettings, store: Submitter, *, readers: Readers | None = None,
               sessions: Sessions | None = None) -> Starlette:
    api = Api(settings, store, readers, sessions)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        api.close()

    middleware = [Middleware(SecurityHeaders, tls=settings.tls)]
    if settings.loopback:
        public = (urlsplit(settings.public_origin).hostname or "").removesuffix(".") \
            if settings.public_origin else None
        middleware.insert(0, Middleware(LoopbackHostCheck, tls=settings.tls,
                                        extra_names=frozenset({public} if public else ())))
    app = Starlette(
        routes=ROUTES,
        middleware=middleware,
        exception_handlers={
            AuthError: _auth_error,
            ParamError: _bad_request,
            QueryError: _bad_request,
            IndexUnavailableError: _index_unavailable,
            IndexOutOfDateError: _index_unavailable,
            QueryTimeoutError: _query_timeout,
            HTTPException: _http_error,
            ReadNotRecordedError: _unavailable,
            StorageError: _unavailable,
            NotRegularFileError: _not_a_regular_file,
            ReaderError: _readers_unavailable,
            ReadersLate: _readers_late,
            QueriesHung: _queries_hung,
            DiskLate: _disk_late,
            ClientDisconnect: _client_gone,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    app.state.api = api
    return app


def _error(status: int, error: str, message: str,
           headers: dict[str, str] | None = None) -> Response:
    return routes.json_response({"error": error, "message": message}, status, headers)


def _unavailable_answer(request: Request, exc: Exception, error: str, message: str,
                        retry: int | None = None) -> Response:
    """Every 503 of the handlers below: counted once by its reason
    (``collector.api.unavailable``), so that an operator alerts on ``/metrics`` rather
    than on these log lines; with ``Retry-After`` (``retry`` seconds, else the usual)."""
    request.app.state.api.count_unavailable(type(exc))
    return _error(503, error, message,
                  retry_after() if retry is None else retry_after(retry))


async def _auth_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthError)
    try:
        await request.app.state.api.record_denial(request, exc)
    except Exception:  # the refusal stands whether or not it could be recorded
        # %r: the path is the client's text, decoded; raw, its controls would forge what
        # the operator reads (an ANSI escape, a line separator).
        log.exception("query API: a refused %s %r could not be recorded", request.method,
                      request.url.path)
    return _error(exc.status, exc.error, exc.message, exc.headers)


async def _bad_request(request: Request, exc: Exception) -> Response:
    return _error(400, "bad_request", str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    message = str(exc.detail)
    if exc.status_code == 405 and "Allow" in headers:
        message = f"{request.method} is not served at this path: use {headers['Allow']}"
    return _error(exc.status_code, "not_found" if exc.status_code == 404 else "http_error",
                  message, headers)


async def _unavailable(request: Request, exc: Exception) -> Response:
    # The store's state (a full disk, another acknowledgement under way, a stop), not the
    # request's: worth another try, as its message says.
    log.error("query API: %s", exc)
    return _unavailable_answer(request, exc, "unavailable", str(exc))


#: What a reader is told when the index cannot answer. The data directory's path and
#: the index's state are for the operator, in the log, not for every API client.
INDEX_UNAVAILABLE_MESSAGE: Final = (
    "the collector's index cannot answer now: it may be being rebuilt or repaired (at "
    "the collector's start-up), so retry in a minute; if this lasts, the collector's log "
    "says what is wrong and what to do (usually `audit-collector reindex`, run by an "
    "operator with the collector stopped)")
#: Seconds a client is told to wait when the index cannot answer (the message's minute).
INDEX_RETRY_AFTER: Final = 60


async def _index_unavailable(request: Request, exc: Exception) -> Response:
    # The data directory's state, not the request's: 503, which a client may retry, and
    # not 400, which told it to change a request that was fine.
    log.error("query API: %s", exc)
    return _unavailable_answer(request, exc, "unavailable", INDEX_UNAVAILABLE_MESSAGE,
                               INDEX_RETRY_AFTER)


async def _query_timeout(request: Request, exc: Exception) -> Response:
    # 503, as the API's other "not now" answers, not 400: every parameter was valid, and
    # the same query may end in time on a less busy collector. The message says to narrow
    # it, which is what usually helps; its code tells it from the other 503s.
    log.warning("query API: %s %r: %s", request.method, request.url.path, exc)
    return _unavailable_answer(request, exc, "query_timeout", str(exc))


async def _not_a_regular_file(request: Request, exc: Exception) -> Response:
    # Something else in a segment file's place (a FIFO, a device): the store's state,
    # not the request's, as a damaged segment's. The log has its path and what an
    # operator does (``in_the_way.said_by_the_collector``, worded so by the query
    # pool); the client, what it is and that an operator must mend it.
    assert isinstance(exc, NotRegularFileError)
    segments = request.app.state.api.settings.data_dir / "segments"
    if exc.filename is None or Path(exc.filename).parent != segments:
        return await _internal_error(request, exc)  # another file: as any fault
    log.error("query API: %s %r: %s", request.method, request.url.path, exc)
    return _unavailable_answer(
        request, exc, "unavailable",
        f"the segment file {Path(exc.filename).name} of the collector's store cannot be "
        f"read: something else is in its place. An operator must move it out of the way "
        f"and put the segment file back (the collector's log says how); try again then")


async def _readers_late(request: Request, exc: Exception) -> Response:
    # Before any credential is checked, as for a damaged file: no denial to record.
    return _unavailable_answer(request, exc, "unavailable", str(exc))


async def _disk_late(request: Request, exc: Exception) -> Response:
    # The disk, not the request: worth another try once it answers (the call goes on).
    log.warning("query API: %s %r: %s", request.method, request.url.path, exc)
    return _unavailable_answer(request, exc, "unavailable", str(exc))


async def _queries_hung(request: Request, exc: Exception) -> Response:
    # A busy pool's 503, but an error: the disk does not answer, which waiting for a less
    # busy collector (or more query threads) does not mend.
    log.error("query API: %s %r: %s", request.method, request.url.path, exc)
    return _unavailable_answer(request, exc, "unavailable", str(exc))


async def _readers_unavailable(request: Request, exc: Exception) -> Response:
    # Raised before any credential is checked (the reader accounts cannot be read), so
    # anyone may see this answer: the detail, with the file's absolute path, goes to
    # the log only.
    log.error("query API: %s", exc)
    return _unavailable_answer(
        request, exc, "unavailable", "the collector cannot check credentials now: its log "
        "has the details; try again once an operator has mended the readers file")


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client closed before its body ended (or the connection guard closed a stalled
    # one): not the collector's failure, so no traceback in its log, which a stream of
    # such clients could otherwise fill at several KiB each. Nobody reads this answer.
    return Response(status_code=400)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("query API: %s %r failed", request.method, request.url.path)  # %r: above
    response = _error(500, "internal", "the collector could not answer this request: its "
                      "log has the details")
    # Starlette sends this answer from outside the middleware stack, SecurityHeaders
    # included: it carries the same headers as every other response by itself.
    for name, value in security_headers(request.app.state.api.settings.tls):
        response.headers[name.decode()] = value.decode()
    return response
