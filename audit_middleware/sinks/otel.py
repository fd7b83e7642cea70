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

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final

from opentelemetry._logs import LoggerProvider, SeverityNumber, get_logger, get_logger_provider

from .. import otel
from .._counter import Counter
from ..errors import AuditArgumentTypeError, AuditConfigurationError
from ..event import AuditEvent, encodable
from ..tracing import NO_SPAN
from .base import Sink
from .batching import BatchingQueue, call_if_alive, close_in_multiprocessing_children

log = logging.getLogger("audit_middleware")

_SEVERITY = {number: SeverityNumber(number) for number, _ in (otel.SEVERITY_INFO,
                                                               otel.SEVERITY_WARN)}
#: Of a ``flush``/``drain`` timeout, the share the log copies keep however long the
#: primary takes (a collector that does not answer uses all it is given, which left the
#: copies 0 s): this fraction, at most ``_COPY_SHARE_MAX`` seconds. The primary's events
#: are the durable ones: they keep the rest.
_COPY_SHARE: Final = 0.1
_COPY_SHARE_MAX: Final = 0.5


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
        if isinstance(primary, type) or (logger_provider is not None and not callable(
                getattr(logger_provider, "get_logger", None))):
            wrong = (f"primary={primary.__name__} is a class: pass an instance, e.g. "
                     f"{primary.__name__}()" if isinstance(primary, type) else
                     f"logger_provider={logger_provider!r} has no get_logger(): pass an "
                     f"OpenTelemetry LoggerProvider, or leave it out for the global one")
            raise AuditConfigurationError(wrong)
        if primary is not None and not all(
            callable(getattr(primary, m, None)) for m in ("submit", "flush", "close", "stats")
        ):
            raise AuditArgumentTypeError(
                f"primary={primary!r:.80} is not a sink: it needs submit(), flush(), close() "
                f"and stats(); pass one, e.g. OTelLogSink(CollectorSink(...)) (see "
                f"audit_middleware.sinks), or leave primary out for the log copy alone")
        self.primary = primary
        self._provider = logger_provider
        self._exit_timeout = exit_timeout
        self._closed = False
        #: The last provider flush's thread (``_flush_provider``), maybe still running.
        self._flusher: threading.Thread | None = None
        #: The exit drain's deadline (``_drain_at_exit``) for the queue, and for the
        #: provider's flush, kept when that did not finish by it: the close that follows
        #: at exit gives it what is left, not a second wait on the same stall.
        self._queue_stalled_at_exit: float | None = None
        self._provider_stalled_at_exit: float | None = None
        #: The exit drain did not hand the primary's events on in time (a collector that
        #: does not answer): what it held is spooled or counted by now, so the close that
        #: follows at exit gives the primary no second ``exit_timeout`` on the same stall.
        self._primary_stalled_at_exit = False
        # A ProxyLogger when no provider is set yet: it follows a later
        # set_logger_provider(), so the sink may be configured before the SDK.
        self._logger = get_logger(otel.SCOPE_NAME, logger_provider=logger_provider)
        self.emitted = Counter()
        self.failed_events = Counter()  # one event's log copy failed, not its batch
        self._queue: BatchingQueue[AuditEvent] = BatchingQueue(
            self._emit, max_queue=max_queue, max_batch=max_batch, max_delay=max_delay,
            name="audit-otel-logs", exit_timeout=exit_timeout,
            after_fork=self._after_fork)  # a child's counters start from zero with it
        ref = weakref.ref(self)
        # Runs before the queue's and the primary's own exit hooks (atexit is last in,
        # first out): the primary is closed first at exit too, not after the log copy's
        # drain, which a stalled exporter holds for up to exit_timeout.
        atexit.register(call_if_alive, ref, "close", None)
        # The copies' drain itself must not wait for this hook's turn: a provider set up
        # after this sink would be shut down by then.
        _drain_before_other_exit_hooks(ref)
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
        # An event the primary refuses (it raises) is not copied: the copy never shows
        # what the audit trail of record does not have.
        if self.primary is not None:
            self.primary.submit(event)
        self._queue.submit(event)  # in a uWSGI child, its fork check resets ours too

    def _after_fork(self) -> None:
        self.emitted.reset()
        self.failed_events.reset()
        # The parent's flush thread does not exist here; without the at-fork hook
        # (uWSGI) its Thread would still look alive and be waited on for every timeout.
        self._flusher = None

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
            context=event.otel_context or NO_SPAN,
            severity_number=_SEVERITY[number],
            severity_text=text,
            body=body,
            attributes=otel.log_attributes(record),
            event_name=event.type,
        )

    # -- control ------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """The primary's flush, then the log copies' and the logger provider's, all
        within ``timeout``."""
        return self._flush_after(self.primary.flush if self.primary is not None else None,
                                 timeout)

    def drain(self, timeout: float) -> bool:
        """For ASGI lifespan shutdown (``middleware``), after which the process may end
        without exit handlers: the primary's ``drain`` when it has one (a CollectorSink
        spools what the collector has not acknowledged by the deadline; a flush would
        leave it in flight, and lost), else its flush; then the log copies, all within
        ``timeout``."""
        return self._flush_after(self._primary_drain(), timeout)

    def _primary_drain(self) -> Callable[[float], bool] | None:
        primary_drain = getattr(self.primary, "drain", None)
        if not callable(primary_drain) and self.primary is not None:
            primary_drain = self.primary.flush
        return primary_drain

    def _flush_after(self, primary: Any, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        share = _primary_share(timeout)
        done = bool(primary(share)) if primary is not None else True
        if timeout is not None and share is not None and deadline is not None:
            # A primary may wait past its share: a CollectorSink's drain does while its
            # spool write is under way (a slow disk, up to 5.5 s). The copies then get
            # their share after it, not the 0 s left.
            deadline = max(deadline, time.monotonic() + timeout - share)
        return self._flush_copies(deadline) and done

    def _flush_copies(self, deadline: float | None) -> bool:
        done = self._queue.flush(_remaining(deadline))
        return self._flush_provider(deadline) and done

    def _drain_at_exit(self) -> None:
        """The first exit hook (``_drain_before_other_exit_hooks``): the primary's drain
        within ``exit_timeout``, then the log copies' and the provider's flush within
        ``exit_timeout`` more, as ``close`` would, before the provider's own exit hook
        can shut it down. Both sinks stay open: an exit hook that emits later still
        reaches the primary, and ``close`` (the sink's own exit hook) ends them."""
        if self._closed:
            return
        primary = self._primary_drain()
        try:
            if primary is not None and not primary(self._exit_timeout):
                self._primary_stalled_at_exit = True
        finally:
            deadline = time.monotonic() + self._exit_timeout
            if not self._queue.flush(_remaining(deadline)):
                self._queue_stalled_at_exit = deadline
            if not self._flush_provider(deadline):
                self._provider_stalled_at_exit = deadline

    def _flush_provider(self, deadline: float | None) -> bool:
        """``force_flush`` of the logger provider, on a thread of its own: the SDK's
        batch processor exports synchronously and does not keep to the time it is given,
        and a stalled exporter must hold neither a flush past its timeout nor the process
        at exit (a multiprocessing child ends through ``close``). False when it did not
        finish in time or said it failed."""
        provider: Any = self._provider or get_logger_provider()
        force_flush = getattr(provider, "force_flush", None)
        if not callable(force_flush):
            return True
        # One provider flush at a time: one that a stalled exporter holds is waited for,
        # not joined by another thread per call, each blocked behind the SDK's export
        # lock for as long as the stall lasts. (Two callers at once may start two.)
        if self._flusher is not None and not self._ended(self._flusher, deadline):
            return False
        remaining = _remaining(deadline)
        millis = 30_000 if remaining is None else max(1, int(remaining * 1000))
        result: list[bool] = []
        flusher = threading.Thread(target=lambda: result.append(bool(force_flush(millis))),
                                   name="audit-otel-flush", daemon=True)
        self._flusher = flusher
        flusher.start()
        return self._ended(flusher, deadline) and result == [True]

    @staticmethod
    def _ended(flusher: threading.Thread, deadline: float | None) -> bool:
        remaining = _remaining(deadline)
        flusher.join(remaining)
        if flusher.is_alive():
            log.warning("audit: the OpenTelemetry logger provider did not flush within "
                        "%.1fs; its exporter may have lost log copies", remaining or 0.0)
            return False
        return True

    def close(self, timeout: float | None = None) -> None:
        """Close the primary (within ``timeout``, or its own exit timeout), then this
        sink's queue and a flush of the logger provider, together within ``timeout`` (or
        ``exit_timeout``). The provider is the app's: flushed, not shut down."""
        if self._closed:  # e.g. replaced by configure(), then its exit hook: no second wait
            return
        self._closed = True
        limit = self._exit_timeout if timeout is None else timeout
        exiting = timeout is None  # the exit hook: after the exit drain, if it ran
        try:
            if self.primary is not None:
                # After a stalled exit drain: only what exit hooks emitted since is left,
                # spooled (or counted) at once rather than waited for again.
                self.primary.close(0.0 if exiting and self._primary_stalled_at_exit
                                   else timeout)
        finally:
            deadline = time.monotonic() + limit
            self._queue.close(_remaining(
                _earlier(deadline, self._queue_stalled_at_exit if exiting else None)))
            self._flush_provider(
                _earlier(deadline, self._provider_stalled_at_exit if exiting else None))

    def stats(self) -> dict[str, int]:
        """The primary's counters, plus ``otel_emitted`` (log records handed to the Logs
        API), ``otel_queued``, ``otel_failed`` and ``otel_dropped`` (queue full: the log
        copy of an event is dropped, never the primary's)."""
        counts = self._queue.counts()
        if self.primary is not None:
            result = dict(self.primary.stats())
        else:
            result = {"submitted": counts["submitted"], "delivered": self.emitted.value,
                      "dropped": counts["dropped"] + counts["failed"]
                      + self.failed_events.value}
        result.update(otel_emitted=self.emitted.value, otel_queued=counts["queued"],
                      otel_failed=counts["failed"] + self.failed_events.value,
                      otel_dropped=counts["dropped"])
        return result

    def __repr__(self) -> str:
        return f"OTelLogSink({self.primary!r})"


def _drain_before_other_exit_hooks(ref: weakref.ref[OTelLogSink]) -> None:
    """Make ``_drain_at_exit`` the first atexit callback to run, whatever was registered
    after this sink: a logger provider set up later (``opentelemetry-instrument``, a
    framework plugin) registers its own shutdown later, which atexit (last in, first out)
    ran before this sink's close, and the copies still queued were lost.

    ``threading._register_atexit`` (CPython's, used by ``concurrent.futures``) runs its
    callbacks when the main thread ends, before any atexit callback but also before the
    other non-daemon threads are joined, which may still emit: so it does not drain, it
    registers the drain with atexit then, last, hence first to run, once those threads
    have ended. It is private: without it (another Python), only the close hook is left,
    and a provider set up after the sink is shut down before it."""
    register = getattr(threading, "_register_atexit", None)
    if not callable(register):
        return
    try:
        register(atexit.register, call_if_alive, ref, "_drain_at_exit")
    except RuntimeError:  # a sink made while the interpreter shuts down: too late
        pass


def _earlier(deadline: float, other: float | None) -> float:
    return deadline if other is None else min(deadline, other)


def _primary_share(timeout: float | None) -> float | None:
    return None if timeout is None else timeout - min(timeout * _COPY_SHARE, _COPY_SHARE_MAX)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)
