"""``OTelLogSink``: each audit event also as an OpenTelemetry log record.

    from audit_middleware.shipper import CollectorSink
    from audit_middleware.sinks.otel import OTelLogSink

    audit.configure(sink=OTelLogSink(CollectorSink("unix:///var/lib/audit/collector.sock")))

The wrapped sink (the *primary*) stays the audit trail of record: it receives every event
first, and its counters, flush, ``fail_closed`` and errors are the sink's. The OpenTelemetry
copy goes through the Logs API of ``opentelemetry-api`` (the global logger provider, or
the one passed), so it lands wherever the app's OpenTelemetry SDK sends its logs,
correlated with the span that was active at emit (see ``audit_middleware.otel`` for the
attributes). Without an SDK configured the Logs API is a no-op and so is the copy.

The request thread only enqueues; the log records are built and emitted on this sink's
own background thread. The span travels with the event as the OpenTelemetry ``Context``
captured at emit, so the log record is correlated with the request's span although it
is emitted on another thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from opentelemetry._logs import LoggerProvider, SeverityNumber, get_logger, get_logger_provider
from opentelemetry.context import Context

from .. import otel
from .._counter import Counter
from ..event import AuditEvent, encodable
from .base import Sink
from .batching import BatchingQueue, close_in_multiprocessing_children

log = logging.getLogger("audit_middleware")

_SEVERITY = {number: SeverityNumber(number) for number, _ in (otel.SEVERITY_INFO,
                                                               otel.SEVERITY_WARN)}
_NO_CONTEXT = Context()


class OTelLogSink:
    def __init__(
        self,
        primary: Sink | None = None,
        *,
        logger_provider: LoggerProvider | None = None,
        max_queue: int = 10_000,
        max_batch: int = 512,
        max_delay: float = 0.2,
        exit_timeout: float = 5.0,
    ) -> None:
        if primary is not None and not all(
            callable(getattr(primary, m, None)) for m in ("submit", "flush", "close", "stats")
        ):
            raise TypeError(f"primary={primary!r} is not a sink: it needs submit(), flush(), "
                            "close() and stats() (see audit_middleware.sinks)")
        self.primary = primary
        self._provider = logger_provider
        self._exit_timeout = exit_timeout
        # A ProxyLogger when no provider is set yet: it follows a later
        # set_logger_provider(), so the sink may be configured before the SDK.
        self._logger = get_logger(otel.SCOPE_NAME, logger_provider=logger_provider)
        self.emitted = Counter()
        self.failed_events = Counter()  # one event's log copy failed, not its batch
        self._queue: BatchingQueue[AuditEvent] = BatchingQueue(
            self._emit, max_queue=max_queue, max_batch=max_batch, max_delay=max_delay,
            name="audit-otel-logs")
        # A multiprocessing child skips atexit, the SDK's provider shutdown included:
        # closing this sink there flushes the provider too (after its queue's drain).
        close_in_multiprocessing_children(self, None)  # the primary's and our own bounds

    # A fail_closed primary keeps its meaning: the middleware asks the configured sink.
    @property
    def fail_closed(self) -> bool:
        return bool(getattr(self.primary, "fail_closed", False))

    @property
    def fail_closed_timeout(self) -> float:
        return float(getattr(self.primary, "fail_closed_timeout", 0.0))

    # -- request path -------------------------------------------------------------------
    def submit(self, event: AuditEvent) -> None:
        if self.primary is not None:
            self.primary.submit(event)
        self._queue.submit(event)

    # -- worker -------------------------------------------------------------------------
    def _emit(self, batch: list[AuditEvent]) -> None:
        emit = self._logger.emit
        done = 0
        try:
            for event in batch:
                # One event that cannot be emitted is that event's loss, counted, not
                # the rest of its batch's.
                try:
                    self._emit_one(emit, event)
                except Exception:  # the app's logger provider may raise anything
                    self.failed_events.add()
                    log.exception("audit: the OpenTelemetry log copy of a %s event failed",
                                  event.type)
                    continue
                done += 1
        finally:
            self.emitted.add(done)

    @staticmethod
    def _emit_one(emit: Any, event: AuditEvent) -> None:
        record = event.to_dict()
        try:
            body = otel.log_body(record)
        except TypeError:
            # A lone surrogate (os.fsdecode of undecodable bytes): the visible escape the
            # record's own line has, in the body and in the attributes an exporter encodes.
            record = encodable(record)
            body = otel.log_body(record)
        number, text = otel.severity(record)
        emit(
            timestamp=event.created_ns,
            # The Context captured at emit (tracing.py): its span, not this thread's.
            context=event.otel_context or _NO_CONTEXT,
            severity_number=_SEVERITY[number],
            severity_text=text,
            body=body,
            attributes=otel.log_attributes(record),
            event_name=event.type,
        )

    # -- control ------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        done = self.primary.flush(timeout) if self.primary is not None else True
        done = self._queue.flush(timeout) and done
        provider: Any = self._provider or get_logger_provider()
        force_flush = getattr(provider, "force_flush", None)
        if callable(force_flush):
            millis = 30_000 if timeout is None else max(1, int(timeout * 1000))
            done = bool(force_flush(millis)) and done
        return done

    def close(self, timeout: float | None = None) -> None:
        """Close the primary (within ``timeout``, or its own exit timeout), then this
        sink's queue and a flush of the logger provider, together within ``timeout`` (or
        ``exit_timeout``). The provider is the app's: flushed, not shut down. Its flush
        runs on a thread of its own: the SDK's batch processor exports synchronously and
        does not keep to the time it is given, and a stalled exporter must not hold the
        process (a multiprocessing child ends through this close)."""
        limit = self._exit_timeout if timeout is None else timeout
        try:
            if self.primary is not None:
                self.primary.close(timeout)
        finally:
            deadline = time.monotonic() + limit
            self._queue.close(limit)
            provider: Any = self._provider or get_logger_provider()
            force_flush = getattr(provider, "force_flush", None)
            if callable(force_flush):
                remaining = max(deadline - time.monotonic(), 0.0)
                flusher = threading.Thread(
                    target=force_flush, args=(max(1, int(remaining * 1000)),),
                    name="audit-otel-flush", daemon=True)
                flusher.start()
                flusher.join(remaining)
                if flusher.is_alive():
                    log.warning("audit: the OpenTelemetry logger provider did not flush "
                                "within %.1fs; its exporter may have lost log copies", limit)

    def stats(self) -> dict[str, int]:
        """The primary's counters, plus ``otel_emitted`` (log records handed to the Logs
        API), ``otel_queued``, ``otel_failed`` and ``otel_dropped`` (queue full: the log
        copy of an event is dropped, never the primary's)."""
        counts = self._queue.counts()
        if self.primary is not None:
            result = dict(self.primary.stats())
        else:
            result = {"submitted": counts["submitted"], "delivered": self.emitted.value,
                      "dropped": counts["dropped"] + counts["failed"]}
        result.update(otel_emitted=self.emitted.value, otel_queued=counts["queued"],
                      otel_failed=counts["failed"] + self.failed_events.value,
                      otel_dropped=counts["dropped"])
        return result

    def __repr__(self) -> str:
        return f"OTelLogSink({self.primary!r})"
