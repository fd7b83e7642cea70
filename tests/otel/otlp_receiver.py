"""A real OTLP/HTTP logs receiver for tests: an HTTP server on a loopback port that
decodes each ``POST /v1/logs`` body as an ``ExportLogsServiceRequest`` (opentelemetry-proto)
and answers as an OpenTelemetry Collector would. It can refuse requests (a status for the
next N) and go away and come back on the same port (an outage)."""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

PATH = "/v1/logs"


class OTLPReceiver:
    def __init__(self) -> None:
        self.requests: list[ExportLogsServiceRequest] = []
        self.headers: list[dict[str, str]] = []  # lower-case names
        self.queries: list[str] = []  # the query string of each request ('' for none)
        self.refused = 0
        #: (status, extra response headers) for the next requests
        self._refuse: list[tuple[int, dict[str, str]]] = []
        #: (rejected records, message) answered as an OTLP partial success, next request
        self.partial: list[tuple[int, str]] = []
        #: a request body over this many bytes is answered 413 (a proxy's body limit)
        self.max_body: int | None = None
        #: the status it answers a body over max_body with (some servers say 400)
        self.too_large_status = 413
        self.too_large = 0  # requests answered too_large_status for max_body
        #: records (by audit.collector.seq) it cannot take: a request holding one is
        #: answered 400, whole, as a receiver answers a body it refuses to decode
        self.poison: set[int] = set()
        #: the body of its answer to a request holding one (a receiver's reason)
        self.poison_reason = ""
        #: when set, a request it keeps is answered only once this event is set (a
        #: collector killed meanwhile: the records arrived, their 200 never did)
        self.answer_held: threading.Event | None = None
        self.holding = threading.Event()  # set when an answer is held
        #: (Content-Type, body) of the next 200 answers in place of the OTLP one; a body
        #: of None never ends (zeros written until the client goes away)
        self.answers: list[tuple[str, bytes | None]] = []
        self.answer_cut = threading.Event()  # set when a body that never ends was cut
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def start(self) -> Self:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                status, extra, reason = receiver._handle(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                if status == 200 and receiver.answer_held is not None:
                    receiver.holding.set()  # the records kept, their 200 not sent yet
                    receiver.answer_held.wait(30)
                answer = ExportLogsServiceResponse()
                with receiver._lock:
                    if status == 200 and receiver.partial:
                        rejected, message = receiver.partial.pop(0)
                        answer.partial_success.rejected_log_records = rejected
                        answer.partial_success.error_message = message
                reply = answer.SerializeToString() if status == 200 else reason.encode()
                content_type = "application/x-protobuf"
                with receiver._lock:
                    if status == 200 and receiver.answers:
                        content_type, given = receiver.answers.pop(0)
                        if given is None:
                            self._endless(content_type)
                            return
                        reply = given
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(reply)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(reply)

            def _endless(self, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.end_headers()  # no Content-Length: the body ends with the connection
                try:
                    while True:
                        self.wfile.write(bytes(64 << 10))
                except OSError:
                    receiver.answer_cut.set()
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Go away (connections are refused) until ``start()`` again, same port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def refuse_next(self, count: int, status: int = 503, **headers: str) -> None:
        """Answer the next ``count`` requests with ``status`` (and ``headers``, e.g.
        ``Location`` or ``Retry_After``: underscores become dashes), keeping nothing."""
        extra = {name.replace("_", "-"): value for name, value in headers.items()}
        with self._lock:
            self._refuse += [(status, extra)] * count

    def accept_again(self) -> None:
        """Drop the refusals still queued (``refuse_next``): the next request is taken."""
        with self._lock:
            self._refuse.clear()

    def _handle(self, target: str, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], str]:
        path, _, query = target.partition("?")  # an endpoint may carry an api key there
        with self._lock:
            if self._refuse:
                self.refused += 1
                return (*self._refuse.pop(0), "")
            if path != PATH or headers.get("content-type") != "application/x-protobuf":
                return 415, {}, ""
            if self.max_body is not None and len(body) > self.max_body:
                self.too_large += 1
                return self.too_large_status, {}, ""
            request = ExportLogsServiceRequest()
            request.ParseFromString(body)
            if self.poison & set(_seqs([request])):
                self.refused += 1
                return 400, {}, self.poison_reason
            self.requests.append(request)
            self.headers.append(headers)
            self.queries.append(query)
            return 200, {}, ""

    def log_records(self) -> list[LogRecord]:
        with self._lock:
            return _log_records(self.requests)

    def seqs(self) -> list[int]:
        with self._lock:
            return _seqs(self.requests)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[LogRecord]:
        deadline = time.monotonic() + timeout
        while len(set(self.seqs())) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the receiver got {len(set(self.seqs()))} distinct "
                                     f"records, expected {count}")
            time.sleep(0.01)
        return self.log_records()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def attributes(record: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in record.attributes}


def _log_records(requests: list[ExportLogsServiceRequest]) -> list[LogRecord]:
    return [record for request in requests for resource in request.resource_logs
            for scope in resource.scope_logs for record in scope.log_records]


def _seqs(requests: list[ExportLogsServiceRequest]) -> list[int]:
    return [attributes(r)["audit.collector.seq"] for r in _log_records(requests)]
