"""The OTLP/HTTP exporter the forwarder sends with: ``opentelemetry-exporter-otlp-proto-
http``'s ``OTLPLogExporter`` on a requests session of ours, which keeps what the
exporter does not look at.

- **The answer's body**: a receiver's 200 can carry an OTLP ``partial_success`` (some
  records rejected for good); the exporter reads only the status
  (``rejected_by_receiver``), in the encoding its ``Content-Type`` names. Only the first
  ``MAX_ANSWER_BYTES`` of a body are read (requests read it whole, however large or
  endless, into memory, decompressed).
- **The status**: the exporter follows no redirect and takes any status below 400 for
  success; a 3xx is kept as a failure here (``failure_of``), so that the forwarder does
  not count records the endpoint never received as delivered.
- **Retry-After**: a 429 or 503 may say how long to wait; the exporter waits it only
  within its own timeout, and the forwarder's backoff, which follows, needs it
  (``retry_after_of``).
- **The connections**: the exporter's ``timeout`` bounds each socket read, not the
  request, and closing a session closes only idle connections; ``abort`` shuts down the
  one a stalled request waits on, through a proxy too.

With an OTLP credential-provider variable set, the exporter's session is the provider's:
none of this is available then.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.sdk._logs.export import LogRecordExporter

from collector.endpoint_url import hide_query_values

if TYPE_CHECKING:  # the forwarder imports this module
    from collector.forward_config import ForwardSettings

#: The credential-provider variables of the OTLP/HTTP exporter: when one is set, the
#: exporter's session is the provider's, not ours (no partial-success answers, no abort).
_CREDENTIAL_PROVIDER_VARIABLES: Final = (
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_LOGS_CREDENTIAL_PROVIDER")
#: The session each exporter made here sends with (``rejected_by_receiver``, ``abort``).
_sessions: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
#: The most of a receiver's words (an answer's body, a Location) quoted in last_error.
_QUOTED: Final = 200
#: The most of an answer's body read (after decompression). An OTLP answer is a few
#: bytes (a partial success, a status); past this the rest is left unread and its
#: connection closed, so that a misdirected endpoint's endless or huge 200 (a file
#: server, a gzip bomb) neither fills the collector's memory nor holds the export.
MAX_ANSWER_BYTES: Final = 1 << 20
_READ_CHUNK: Final = 64 << 10


#: The logger the exporter logs its failures and retries with.
_EXPORTER_LOGGER: Final = "opentelemetry.exporter.otlp.proto.http._log_exporter"
#: Loggers that quote the endpoint's URL whole, query (a receiver's key?) included: the
#: exporter's, at each retry within an export ("Transient error ... url:
#: /v1/logs?api_key=..."), and urllib3's, each request's line at DEBUG (``--verbose``).
_URL_LOGGERS: Final = (_EXPORTER_LOGGER, "urllib3.connectionpool")


class _HideQueryValues(logging.Filter):
    """Hides the query values of any URL in a line of those loggers (``shown_endpoint``
    covers only what the collector prints itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = hide_query_values(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        return True


_HIDE_QUERY_VALUES: Final = _HideQueryValues()


class _MutedExports(logging.Filter):
    """Drops the exporter's lines of an export run under ``exporter_lines(False)``. The
    exporter logs each failed export itself (a line per retry of its own, one when it
    gives up): over an outage of days, one or two lines at every retry of the
    forwarder, thousands a day, around the forwarder's own lines at 1, 2, 4, ...
    failures. Per thread: each export runs on a thread of its own."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self._local, "muted", False)

    @contextlib.contextmanager
    def said(self, say: bool) -> Iterator[None]:
        self._local.muted = not say
        try:
            yield
        finally:
            self._local.muted = False


_MUTED_EXPORTS: Final = _MutedExports()


def exporter_lines(say: bool) -> contextlib.AbstractContextManager[None]:
    """Within it, on this thread, the exporter's own log lines are kept only if ``say``
    (the forwarder says the failure such an export may end in)."""
    logger = logging.getLogger(_EXPORTER_LOGGER)
    if _MUTED_EXPORTS not in logger.filters:
        # First: the exporter's own DuplicateFilter drops a line like its previous one
        # within 20 s, and a muted line it saw made it drop the next line said.
        logger.filters.insert(0, _MUTED_EXPORTS)
    return _MUTED_EXPORTS.said(say)


def otlp_http_exporter(settings: ForwardSettings) -> LogRecordExporter:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    for name in _URL_LOGGERS:  # addFilter adds the same filter once
        logging.getLogger(name).addFilter(_HIDE_QUERY_VALUES)
    if any(os.environ.get(name) for name in _CREDENTIAL_PROVIDER_VARIABLES):
        return OTLPLogExporter(endpoint=settings.endpoint, headers=dict(settings.headers),
                               timeout=settings.timeout)
    session = _forwarder_session_class()()
    exporter = OTLPLogExporter(endpoint=settings.endpoint, headers=dict(settings.headers),
                               timeout=settings.timeout, session=session)
    _sessions[exporter] = session
    return exporter


@functools.cache
def _forwarder_session_class() -> type[Any]:
    """A requests session (the OTLP exporter's own dependency, imported when used) that
    keeps the body of the last answer and can abort what it has in flight."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class ForwarderSession(requests.Session):
        last_answer: bytes | None = None
        last_status: int | None = None  # of the last answer (None: no answer)
        last_content_type: str = ""  # of the last answer, lower case
        #: seconds the last answer (a failure) asked to wait before the next request
        retry_after: float | None = None
        #: why the last request failed (an error, or an answer other than 2xx), else None
        last_failure: str | None = None

        def __init__(self) -> None:
            super().__init__()
            # Every connection it opened, so that ``abort`` can end one in use: the
            # exporter's timeout bounds each socket read, not the request, and closing
            # the session closes only idle connections.
            self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
            opened = self._connections

            class Connection(HTTPConnection):
                def connect(self) -> None:
                    super().connect()
                    opened.add(self)

            class SecureConnection(HTTPSConnection):
                def connect(self) -> None:
                    super().connect()
                    opened.add(self)

            class Pool(HTTPConnectionPool):
                ConnectionCls = Connection

            class SecurePool(HTTPSConnectionPool):
                ConnectionCls = SecureConnection

            class Adapter(HTTPAdapter):
                def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
                    super().init_poolmanager(*args, **kwargs)
                    self.poolmanager.pool_classes_by_scheme = {"http": Pool,
                                                               "https": SecurePool}

                def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
                    # Through HTTP_PROXY/HTTPS_PROXY requests uses a manager of its own:
                    # its connections are tracked too (a SOCKS proxy's are not).
                    manager = super().proxy_manager_for(proxy, **kwargs)
                    if not proxy.lower().startswith("socks"):
                        manager.pool_classes_by_scheme = {"http": Pool, "https": SecurePool}
                    return manager

            self.mount("http://", Adapter())
            self.mount("https://", Adapter())

        def request(self, *args: Any, **kwargs: Any) -> Any:
            # The exporter reads only the status; an OTLP receiver's 200 can say it
            # rejected some records (partial success), which must not pass unseen.
            self.last_answer = self.last_failure = self.last_status = None
            self.retry_after, self.last_content_type = None, ""
            try:
                # Streamed: only the first MAX_ANSWER_BYTES of the body are read.
                response = super().request(*args, **{**kwargs, "stream": True})
                _read_bounded(response)
            except Exception as exc:
                self.last_failure = f"{type(exc).__name__}: {exc}"
                raise
            self.last_answer, self.last_status = response.content, response.status_code
            self.last_content_type = response.headers.get("Content-Type", "").lower()
            if not 200 <= response.status_code < 300:
                self.retry_after = _retry_after(response)
                self.last_failure = _refusal(response, self.retry_after)
            return response

        def abort(self) -> None:
            """End every connection it has open, the one a request waits on included:
            that request fails at once."""
            while True:
                try:  # a connection opened meanwhile changes the set under the copy
                    connections = list(self._connections)
                    break
                except RuntimeError:
                    continue
            for connection in connections:
                sock = getattr(connection, "sock", None)
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    return ForwarderSession


def _read_bounded(response: Any) -> None:
    """Read at most ``MAX_ANSWER_BYTES`` of ``response``'s (decoded) body into it, as
    ``response.content``; a body longer than that is not read on: its connection is
    closed (not put back in the pool half read)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_READ_CHUNK):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            response.close()
            break
    response._content = b"".join(chunks)[:MAX_ANSWER_BYTES]
    response._content_consumed = True


def _refusal(response: Any, retry_after: float | None) -> str:
    """What a non-2xx answer says. For a 4xx/5xx the exporter logs it and returns a bare
    FAILURE: kept for stats' last_error, which otherwise said only "see the log". A 3xx
    the exporter returns as SUCCESS: the forwarder sees it here and keeps the batch."""
    status = f"HTTP {response.status_code} {response.reason}"
    if 300 <= response.status_code < 400:
        # Not followed: the exporter sends no body on a redirect, and a redirect to
        # another host would get the forward headers (an Authorization) too.
        where = response.headers.get("Location", "")[:_QUOTED] or "(no Location)"
        return (f"{status}: the endpoint redirects to {where}; the forwarder follows no "
                f"redirect: set forward_endpoint to the URL that answers")
    text = response.content[:_QUOTED].decode("utf-8", "replace").strip()
    wait = f" (retry after {retry_after:g}s)" if retry_after is not None else ""
    return status + wait + (f": {text}" if text else "")


def _retry_after(response: Any) -> float | None:
    """The seconds ``response`` asks to wait (``_seconds``). One that cannot be read is
    removed from the answer: the exporter, which reads it after this on a 429 or 503,
    raised OverflowError out of its export on some (a year of 22 digits)."""
    seconds = _seconds(response.headers.get("Retry-After"))
    if seconds is None:
        response.headers.pop("Retry-After", None)
    return seconds


def _seconds(retry_after: str | None) -> float | None:
    """A Retry-After value (RFC 9110: delay-seconds or an HTTP-date) in seconds from
    now; None when absent or unreadable."""
    if not retry_after:
        return None
    try:
        seconds = float(retry_after.strip())
    except ValueError:
        try:
            when = parsedate_to_datetime(retry_after)
        except (TypeError, ValueError, OverflowError):  # a year or zone past C's int
            return None
        # An HTTP-date is GMT; one that names no zone ("-0000") is read as GMT too.
        seconds = when.replace(tzinfo=when.tzinfo or UTC).timestamp() - time.time()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


#: The media types of a protobuf answer ("": none given, as OTLP answers protobuf).
_PROTOBUF_TYPES: Final = frozenset({"", "application/x-protobuf", "application/protobuf"})


def rejected_by_receiver(exporter: LogRecordExporter) -> tuple[int, str] | None:
    """How many records the receiver's last answer says it rejected, and why (OTLP
    ``partial_success``); None when it says nothing of the kind or cannot be read.

    Read as its ``Content-Type`` says: protobuf (or no type), as OTLP answers the
    protobuf the exporter sends; JSON, as some receivers answer whatever they were sent;
    anything else (a proxy's HTML page) is no OTLP answer, and its bytes read as
    protobuf could "reject" records that were kept."""
    session = session_of(exporter)
    answer = getattr(session, "last_answer", None)
    if not answer:
        return None
    from google.protobuf import json_format  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

    media_type = getattr(session, "last_content_type", "").partition(";")[0].strip()
    parsed = ExportLogsServiceResponse()
    try:
        if media_type in _PROTOBUF_TYPES:
            parsed.ParseFromString(answer)
        elif media_type == "application/json":
            json_format.Parse(answer, parsed, ignore_unknown_fields=True)
        else:
            return None
    except Exception:  # noqa: BLE001 - not what it says it is: nothing to say
        return None
    partial = parsed.partial_success
    if partial.rejected_log_records <= 0:
        return None
    return partial.rejected_log_records, partial.error_message


def failure_of(exporter: LogRecordExporter) -> str | None:
    """Why the exporter's last request failed, as its session saw it (None: unknown, or
    it did not fail). Set after an export the exporter called a success too, when the
    answer was a redirect."""
    return getattr(session_of(exporter), "last_failure", None)


def retry_after_of(exporter: LogRecordExporter) -> float | None:
    """The seconds the last answer asked to wait (Retry-After), if it failed and said."""
    return getattr(session_of(exporter), "retry_after", None)


def status_of(exporter: LogRecordExporter) -> int | None:
    """The HTTP status of the exporter's last answer, as its session saw it (None: no
    answer, or unknown)."""
    return getattr(session_of(exporter), "last_status", None)


def session_of(exporter: LogRecordExporter) -> Any:
    """The session ``exporter`` sends with, if this module made it (else None)."""
    return _sessions.get(exporter)
