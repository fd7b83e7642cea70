"""The forwarder: stored records exported to an OTLP/HTTP logs endpoint, in order, at
least once, resuming from a persisted checkpoint.

    audit-collector serve --forward-endpoint http://otel-collector:4318/v1/logs

When one collector is no longer enough, the answer is the OpenTelemetry pipeline people
already run: the collector stays the durable, indexed store of record and feeds every
record, as an OpenTelemetry log record (the mapping of ``audit_middleware.otel``, plus
``audit.collector.seq``), to an OpenTelemetry Collector, which fans out to whatever
backends the organisation uses.

How it behaves:
- **In order**: records are read from the index by ``seq`` (arrival order), a batch at a
  time; the next batch is read only after the endpoint accepted the previous one.
- **At least once**: the checkpoint (``forward-checkpoint.json``) moves only after the
  endpoint answered 2xx. A crash in between sends that batch again; every log record
  carries the event id as ``log.record.uid`` so a receiver can drop the duplicate.
- **Outages**: any failure (connection refused, timeout, any non-2xx status, a
  redirect included, which is not followed; an answer not complete within ``timeout``
  + ``EXPORT_GRACE``, however slowly it trickles) keeps the batch; it is retried with
  exponential backoff (``backoff_initial`` doubling to ``backoff_max``, with jitter),
  or after the endpoint's ``Retry-After`` when longer (up to ``MAX_RETRY_AFTER``).
  Nothing is skipped, so a receiver that keeps refusing a batch stops the forwarder
  visibly (``state``, ``last_error``, growing lag) rather than losing records silently.
  Logged at the 1st, 2nd, 4th, ... failure in a row, and at the first success after
  them; the exporter's own lines only with those (``exporter_lines``).
- **Lag**: ``stats()`` gives ``lag_events`` (records stored but not yet acknowledged) and
  ``lag_seconds`` (age of the oldest of them); ``/metrics`` exports both.
- Records deleted by retention before they were forwarded cannot be sent: they are
  counted (``skipped``) and logged when found gone (during an outage too), and
  forwarding continues after them.
- **Another store**: the checkpoint names the event at its seq. Where this data
  directory holds another event under that seq (it was replaced, or restored from an
  older backup, while the checkpoint stayed), forwarding starts over from the beginning
  of this store, with an error in the log: what the endpoint already has arrives twice
  (same ``log.record.uid``), nothing is lost. Where it holds no record at that seq yet
  (``state`` "ahead": the records below it are held back and counted as lag), the
  forwarder waits until it does and compares then.
- **Size**: a batch is ``batch_size`` records at most, and cut further so that one
  export stays below ``MAX_EXPORT_BYTES`` (the exporter drops a request over 64 MiB),
  and halved at each 413 of the endpoint (a body limit on its side).
- **Bad request**: a 400 refuses the whole batch for what one record holds, maybe
  (a receiver that cannot decode it): the batch is halved at each 400 until the
  records before that one are accepted, and the one refused is retried alone (never
  skipped: ``last_error`` names its seq); once it is accepted, batches are full again.
  A 400 may be a body limit too: a narrowed size accepted is kept, and doubled after
  ``PROBE_AFTER`` exports accepted at it (twice as many after each larger size refused).

The export itself is ``opentelemetry-exporter-otlp-proto-http``'s ``OTLPLogExporter``
(protobuf over HTTP, its own short retries inside ``timeout``).
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import unquote

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from audit_middleware import otel
from audit_middleware._counter import worth_saying
from collector import query as q
from collector.endpoint_url import hide_query_values, shown_endpoint
from collector.forward_checkpoint import CHECKPOINT_FILE, CheckpointError, CheckpointFile
from collector.otlp_http import (
    exporter_lines,
    failure_of,
    otlp_http_exporter,
    rejected_by_receiver,
    retry_after_of,
    session_of,
    status_of,
)
from collector.render import terminal_safe
from collector.storage.records import created_micros

__all__ = ["CheckpointError", "ForwardError", "ForwardSettings", "Forwarder", "forward_settings",
           "to_log_records"]

log = logging.getLogger("collector.forward")

SERVICE_NAME: Final = "audit-collector"
MAX_BATCH: Final = 10_000
#: What one export may carry, by a generous estimate of its encoded size (each field is
#: sent twice, as an attribute and in the JSON body, where a control character takes six
#: bytes). The OTLP exporter drops a request over 64 MiB on its own, and the same batch
#: then failed forever: a batch is cut below this instead (one record at least).
MAX_EXPORT_BYTES: Final = 8 << 20
#: Time an export may take beyond ``timeout``: the exporter's timeout bounds each socket
#: read, not the request, and an endpoint trickling its answer held the forwarder for good.
EXPORT_GRACE: Final = 5.0
#: Seconds a stop waits for the export in flight before cutting it off: an answering
#: endpoint answers well within it.
STOP_GRACE: Final = 1.0
_MAX_TIMESTAMP_NS: Final = (1 << 63) - 1
HTTP_BAD_REQUEST: Final = 400
HTTP_TOO_LARGE: Final = 413
#: Exports accepted in a row at a size narrowed by 400s before a double size is tried
#: (doubled at each such try refused: a body limit answered 400 is tried rarely).
PROBE_AFTER: Final = 8
#: An HTTP field name (RFC 9110 token).
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: The longest wait a receiver's Retry-After gets: one far off (a clock off by years, a
#: mistake) must not stop forwarding for good.
MAX_RETRY_AFTER: Final = 600.0


class ForwardError(ValueError):
    """Forwarder settings that cannot work; the message names the setting."""


@dataclass(frozen=True)
class ForwardSettings:
    endpoint: str  # the full OTLP/HTTP logs URL, e.g. http://collector:4318/v1/logs
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. an Authorization
    batch_size: int = 512
    timeout: float = 10.0  # one export request, the exporter's own retries included
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    poll_interval: float = 0.5  # how often to look for new records when caught up
    start: Literal["beginning", "now"] = "beginning"  # where a new endpoint starts
    service_name: str = SERVICE_NAME

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ForwardError(f"forward endpoint {self.shown_endpoint!r} must be an http(s) URL "
                               "such as http://otel-collector:4318/v1/logs")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ForwardError(f"forward batch size must be 1 to {MAX_BATCH}, "
                               f"got {self.batch_size}")
        if self.timeout <= 0 or self.backoff_initial <= 0 or self.poll_interval <= 0:
            raise ForwardError("forward timeout, backoff and poll interval must be > 0")
        if self.backoff_max < self.backoff_initial:
            raise ForwardError("forward backoff_max must be at least backoff_initial")
        if self.start not in ("beginning", "now"):
            raise ForwardError(f"forward_from must be 'beginning' or 'now', got {self.start!r}")

    @property
    def shown_endpoint(self) -> str:
        """``endpoint`` as logs, stats and messages show it (no query values: a key)."""
        return shown_endpoint(self.endpoint)


def parse_headers(text: str) -> dict[str, str]:
    """``key=value,key2=value2`` (the form of OTEL_EXPORTER_OTLP_HEADERS: percent-encoded,
    ``Basic%20...``, as OpenTelemetry SDKs decode it; a ``,`` in a value is ``%2C``).

    The text holds credentials (forward_headers is a secret option): an error names a
    pair by its place, and shows its name only when it is one, never the text given. A
    pair written ``Authorization: Bearer x`` (no ``=``), or one cut by a ``,`` in its
    value, was printed whole, secret included, at every refused start."""
    headers: dict[str, str] = {}
    pairs = [part.strip() for part in text.split(",")]
    for place, item in enumerate(filter(None, pairs), start=1):
        key, sep, value = item.partition("=")
        key, value = unquote(key).strip(), unquote(value).strip()
        # Without its '=', a "name" is a piece of a value cut off by a ','.
        named = f"{key!r}" if sep and _HEADER_NAME.fullmatch(key) else f"number {place}"
        if not sep or not key:
            raise ForwardError(f"forward header {named}: expected key=value pairs separated "
                               "by commas, e.g. Authorization=Bearer x (not 'Name: value'; "
                               "a ',' in a value is %2C)")
        if not (key + value).isascii() or any(ord(c) < 32 or ord(c) == 127
                                              for c in key + value):
            # HTTP header values are ASCII: one that is not failed every export. Checked
            # once decoded: a %0D%0A must not add a header line.
            raise ForwardError(f"forward header {named}: names and values must be "
                               "printable ASCII once percent-decoded")
        if not _HEADER_NAME.fullmatch(key):
            # Else accepted here and refused at every export (requests: a ':'; the
            # receiver: a space, a parenthesis), a failure without end.
            raise ForwardError(f"forward header {named}: its name is not a valid HTTP "
                               "header name (letters, digits and !#$%&'*+-.^_`|~ only)")
        headers[key] = value
    return headers


def forward_settings(config: Any) -> ForwardSettings:
    """The forwarder settings of a ``CollectorConfig`` (``forward_*`` options)."""
    return ForwardSettings(
        endpoint=config.forward_endpoint,
        headers=parse_headers(config.forward_headers or ""),
        batch_size=config.forward_batch,
        timeout=config.forward_timeout,
        backoff_max=max(config.forward_backoff_max, ForwardSettings.backoff_initial),
        start=config.forward_from,
    )


# -- records -> OpenTelemetry log records --------------------------------------------------------
_SEVERITY = {number: SeverityNumber(number) for number, _ in (otel.SEVERITY_INFO,
                                                               otel.SEVERITY_WARN)}


def _context(record: Mapping[str, Any]) -> Context:
    trace_id, span_id = record.get("trace_id"), record.get("span_id")
    if not trace_id or not span_id:
        return Context()
    span = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                       trace_flags=TraceFlags(TraceFlags.DEFAULT))
    return set_span_in_context(NonRecordingSpan(span), Context())


def to_log_records(records: Sequence[Mapping[str, Any]], resource: Resource,
                   scope: InstrumentationScope) -> list[ReadableLogRecord]:
    """Stored records as SDK log records ready for an exporter."""
    observed = time.time_ns()
    out = []
    for record in records:
        number, text = otel.severity(record)
        attributes = otel.log_attributes(record)
        attributes[otel.COLLECTOR_SEQ] = record["seq"]
        timestamp: int | None = created_micros(record["created"]) * 1000
        if not 0 <= timestamp <= _MAX_TIMESTAMP_NS:  # type: ignore[operator]
            # Stored by a version that took any year: OTLP cannot carry it (the batch
            # failed to encode, forever). The body still holds ``created``.
            timestamp = None
        log_record = LogRecord(
            timestamp=timestamp,
            observed_timestamp=observed,
            context=_context(record),
            severity_number=_SEVERITY[number],
            severity_text=text,
            body=otel.log_body(record),
            attributes=attributes,
            event_name=record["type"],
        )
        out.append(ReadableLogRecord(log_record, resource, scope))
    return out


def within_budget(batch: Sequence[ReadableLogRecord], budget: int = MAX_EXPORT_BYTES) -> int:
    """How many of ``batch``'s first records one export can carry (at least one)."""
    total = 0
    for n, readable in enumerate(batch):
        body = readable.log_record.body
        total += 2 * utf8_size(body if isinstance(body, str) else str(body)) + 1024
        if total > budget:
            return max(n, 1)
    return len(batch)


def utf8_size(text: str) -> int:
    """``text``'s size in UTF-8 bytes. Its length in characters was taken for it: text
    outside ASCII is up to 4 bytes a character, and a batch of it passed the budget up
    to four times over. ``isascii`` costs nothing (CPython keeps it as a flag): only
    other text is encoded to be measured."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


# -- the forwarder --------------------------------------------------------------------------------
ExporterFactory = Callable[[ForwardSettings], LogRecordExporter]


class Forwarder:
    def __init__(self, data_dir: Path, settings: ForwardSettings, *,
                 exporter: ExporterFactory = otlp_http_exporter) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings
        self.checkpoint = CheckpointFile(self.data_dir / CHECKPOINT_FILE)
        stored = self.checkpoint.of(settings.endpoint)  # CheckpointError: refuse
        if stored is not None and self.checkpoint.holds_credentials():
            # An older version's: rewritten
            self.checkpoint.save(settings.endpoint, stored.seq, stored.event_id)
        # None: decided on the first look (start)
        self._position: int | None = None if stored is None else stored.seq
        #: The event the checkpoint names at ``_position`` (None: nothing to compare).
        self._mark = None if stored is None else stored.event_id
        #: Whether the store was found to be the one the checkpoint was written for (or
        #: nothing tells otherwise); until then nothing is forwarded.
        self._checked = stored is None or stored.seq == 0
        self._make_exporter = exporter
        self._exporter = exporter(settings)
        #: The export running on its own thread (see ``_export``); one at a time.
        self._in_flight: threading.Thread | None = None
        self._resource = Resource.create({"service.name": settings.service_name})
        self._scope = InstrumentationScope(otel.SCOPE_NAME)
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.state = "starting"
        self.forwarded = 0  # records acknowledged by the endpoint (this process)
        self.batches = 0
        self.failures = 0  # export attempts that failed (each is retried)
        #: Failures since the last accepted export: what is logged at 1, 2, 4, ... (the
        #: total, ``failures``, said a new outage only when it reached a power of two).
        self._streak = 0
        self.skipped = 0  # records gone (retention) before they could be forwarded
        self.rejected = 0  # records the receiver accepted the batch of, but rejected
        #: The highest seq ``skipped`` counted (None: none yet since the position was set).
        self._gone_upto: int | None = None
        self.last_error: str | None = None
        self._newest = 0
        self._first_pending = 0  # the seq of the first record after the checkpoint
        self._oldest_pending_us: int | None = None
        self._delay = settings.backoff_initial
        self._warned_ahead = False
        #: Records per export: ``batch_size``, halved at each 413 of the endpoint.
        self._most = settings.batch_size
        #: Records per export since a 400 (None: batches of ``_most``): halved at each
        #: 400, and kept once one passes (see ``_bad_request``).
        self._suspect: int | None = None
        #: A record was refused with 400 on its own: that record, not the batches'
        #: size, is what the receiver refuses; once it passes, batches are full again.
        self._refused_alone = False
        self._said_suspect: int | None = None  # the size _accepted_after_bad_request said
        self._passed = 0  # exports accepted in a row at ``_suspect``
        self._probing = False  # ``_suspect`` was just doubled: not accepted at it yet
        self._probe_after = PROBE_AFTER  # of those before ``_suspect`` is doubled
        #: The Retry-After of the answer that failed the last step (None: none asked).
        self._asked: float | None = None
        self._shut_down: LogRecordExporter | None = None  # (a second shutdown warns)

    # -- control --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-forwarder",
                                            daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Look for new records now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the export in flight (its checkpoint is saved) if it ends within
        ``STOP_GRACE``, then stop. An export still waiting then on its endpoint, or
        before the exporter's own retry, is cut off: its batch is sent again at the next
        start (at least once), and a dead endpoint no longer holds the collector's stop
        for the whole timeout after the others."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            grace = min(timeout, STOP_GRACE)
            self._thread.join(grace)
            if self._thread.is_alive():
                session = session_of(self._exporter)
                if session is not None:
                    session.abort()
                # Also ends the exporter's wait before its own retry (a Retry-After
                # within forward_timeout): abort ends only a request in flight, and the
                # exporter sent the batch again once that wait was over.
                self._shutdown_exporter()
                self._thread.join(timeout - grace)
            self._thread = None
        self._shutdown_exporter()
        self.state = "stopped"

    def _shutdown_exporter(self) -> None:
        exporter = self._exporter
        if exporter is self._shut_down:
            return
        self._shut_down = exporter
        try:
            exporter.shutdown()  # type: ignore[no-untyped-call]
        except Exception:
            log.debug("forwarder: exporter shutdown failed", exc_info=True)

    # -- the loop -------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                try:
                    sent = self.step()
                except Exception as exc:  # noqa: BLE001 - any failure: keep the batch, back off
                    self._failed(exc)
                    self._wait(self._backoff())
                    continue
                if sent == 0:
                    self._wait(self.settings.poll_interval)
        finally:
            # The Reader ``q.search`` kept on this thread: closed by the stop, not left
            # for the thread's end (its index connection and up to 16 segment files).
            q.close_readers(self.data_dir)

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _backoff(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, self.settings.backoff_max)
        jittered = delay * random.uniform(0.8, 1.2)
        # OTLP: a client SHOULD wait what a 429/503 asks (the exporter waits it only
        # within its own timeout; past that, this backoff follows).
        asked = self._asked
        return jittered if asked is None else max(jittered, min(asked, MAX_RETRY_AFTER))

    def _failed(self, exc: Exception) -> None:
        if self._stopping:
            return  # stopped meanwhile: its state stays "stopped"
        with self._lock:
            self.failures += 1
            self.state = "retrying"
            # requests names the URL it failed to reach, query (a key?) included.
            self.last_error = hide_query_values(f"{type(exc).__name__}: {exc}" if str(exc)
                                                else type(exc).__name__)
        self._streak += 1
        if worth_saying(self._streak):  # at 1, 2, 4, 8, ... in a row: visible, not a flood
            # The receiver's answer is quoted in it: escaped, a line break in it would
            # forge a line of this log.
            log.error("forwarder: export to %s failed (%d in a row, %d so far, retrying "
                      "with backoff): %s", self.settings.shown_endpoint, self._streak,
                      self.failures, terminal_safe(self.last_error))

    def _recovered(self) -> None:
        """An export was accepted: the end of an outage is said, as its start was."""
        if self._streak:
            log.info("forwarder: %s accepted again after %d failed exports",
                     self.settings.shown_endpoint, self._streak)
            self._streak = 0

    def step(self) -> int:
        """Export the next batch, if any: the records acknowledged (0 when caught up, or
        while the checkpoint is ahead of the store: ``_check_store``). Raises when the export failed (nothing acknowledged, the checkpoint unchanged)."""
        # Kept by the session until its next request: read for a failure other than
        # that answer (the index unreadable), it made that one wait as long again.
        self._asked = None
        position = self._start_position()
        if not self._checked:
            if not self._check_store(position):
                return 0  # ahead: waits for the record at the checkpoint's seq
            position = self._start_position()  # (0 if the store was another one)
        page = q.search(self.data_dir, q.Filters(), limit=self.settings.batch_size,
                        cursor=q.cursor_after(position), newest_first=False)
        records = page.records
        self._refresh_newest(records)
        if not records:
            with self._lock:
                self._oldest_pending_us = None
                self.state = "idle"
            return 0
        first = records[0]["seq"]
        if first > position + 1:
            self._skipped(position, first)
        with self._lock:
            self._oldest_pending_us = created_micros(records[0]["created"])
            self._first_pending = first
        batch = to_log_records(records, self._resource, self._scope)
        fit = min(within_budget(batch), self._most, self._suspect or self._most)
        batch, records = batch[:fit], records[:fit]
        result = self._export(batch)
        # A "success" with a failure is a redirect (the exporter takes 3xx for 2xx):
        # the endpoint received nothing, and the checkpoint must not move.
        refusal = failure_of(self._exporter)
        if result is not LogRecordExportResult.SUCCESS or refusal is not None:
            status = status_of(self._exporter)
            if status == HTTP_TOO_LARGE:
                self._too_large(len(records))
            elif status == HTTP_BAD_REQUEST:
                self._bad_request(len(records))
            self._asked = retry_after_of(self._exporter)
            why = refusal or "see the log of opentelemetry.exporter"
            raise ExportFailed(f"{self.settings.shown_endpoint} did not accept {len(records)} "
                               f"records (seq {first}-{records[-1]['seq']}): {why}")
        self._recovered()
        self._accepted_after_bad_request(len(records))
        refused = rejected_by_receiver(self._exporter)
        last = records[-1]["seq"]
        self.checkpoint.save(self.settings.endpoint, last, records[-1]["id"])
        if refused is not None:
            # OTLP: a partial success is not retried (the receiver would refuse the same
            # records again); it is counted and said, and forwarding goes on. Counted once
            # the checkpoint passed them: before, a save that failed had the batch sent
            # again and its rejections counted (and logged) again.
            self._rejected(refused, first, last, len(records))
        with self._lock:
            self._position = last
            self.forwarded += len(records)
            self.batches += 1
            self.state = "forwarding"
            self.last_error = None
            self._delay = self.settings.backoff_initial
        return len(records)

    def _rejected(self, refused: tuple[int, str], first: int, last: int, sent: int) -> None:
        with self._lock:
            self.rejected += refused[0]
        log.error("forwarder: %s rejected %d of the %d records of seq %d-%d: %s",
                  self.settings.shown_endpoint, refused[0], sent, first, last,
                  terminal_safe(refused[1]) or "(no reason given)")

    def _too_large(self, sent: int) -> None:
        """The endpoint refused ``sent`` records as too large (a proxy's body limit,
        the OpenTelemetry Collector's ``max_request_body_size``): the same batch would be
        refused forever. Halved for good (the limit stays); one record that is still too
        large is retried, visibly (``last_error``), never skipped."""
        if sent <= 1:
            return
        self._most = max(1, sent // 2)
        log.warning("forwarder: %s refused %d records as too large (HTTP 413); sending "
                    "at most %d per request from now on", self.settings.shown_endpoint, sent,
                    self._most)

    def _bad_request(self, sent: int) -> None:
        """The endpoint answered 400 to ``sent`` records: for what one of them holds (a
        record it cannot decode), or for their size (a body limit some servers answer
        400, not 413). Halved until an export passes: the records before a bad one
        are delivered, and a bad one ends up alone. A larger size tried again (see
        ``_accepted_after_bad_request``) and refused is tried after twice as many."""
        if self._probing:
            self._probe_after *= 2
        self._suspect, self._passed, self._probing = max(1, sent // 2), 0, False
        if sent == 1:
            self._refused_alone = True

    def _accepted_after_bad_request(self, sent: int) -> None:
        """An export passed. After a record refused on its own, the batches are full
        again (the 400 was that record's). Else the size that passed is kept, and
        doubled after ``_probe_after`` exports in a row pass at it, back to full.
        Full again at once, a body limit answered 400 refused the next batch, halved
        it down again, and so on at every batch for good (a failure, its backoff and
        two log lines each time); never grown again, two 400s of a receiver being
        set up left 1 record per export for good."""
        suspect, probed = self._suspect, self._probing
        self._probing = False
        if suspect is None or self._refused_alone:
            if probed or self._refused_alone:  # full again: what a next 400 starts from
                self._probe_after, self._said_suspect = PROBE_AFTER, None
            self._suspect, self._passed, self._refused_alone = None, 0, False
            return
        self._passed += 1
        if self._passed >= self._probe_after:
            grown = suspect * 2
            self._suspect = None if grown >= self._most else grown
            self._passed, self._probing = 0, True
        elif self._said_suspect is None or suspect < self._said_suspect:
            self._said_suspect = suspect
            log.warning("forwarder: %s accepted %d records after refusing more with HTTP "
                        "400; sending at most %d per request, more again after %d "
                        "accepted (a body limit answered 400?)",
                        self.settings.shown_endpoint, sent, suspect, self._probe_after)

    def _export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        """The exporter's answer within ``timeout`` + EXPORT_GRACE, else ExportFailed.
        The export runs on a thread of its own: past the deadline its connection is shut
        down (the request then fails at once), its exporter too, and a new one is made
        for the retry. An export that still does not end (an exporter not made here) is
        waited for: no other starts meanwhile, so a stall holds one thread, not one per
        retry."""
        stalled = self._in_flight
        if stalled is not None and stalled.is_alive():
            raise ExportFailed(f"an export to {self.settings.shown_endpoint} abandoned after "
                               f"its deadline has not ended yet (a stalled endpoint)")
        answer: list[LogRecordExportResult | BaseException] = []
        exporter = self._exporter
        # Its own lines only with the forwarder's: an export that fails says them
        # when the forwarder says that failure (``_failed``).
        say = worth_saying(self._streak + 1)

        def run() -> None:
            try:
                with exporter_lines(say):
                    answer.append(exporter.export(batch))
            except BaseException as exc:  # noqa: BLE001 - handed to the forwarder thread
                answer.append(exc)

        with self._lock:
            self.state = "exporting"
        thread = self._in_flight = threading.Thread(target=run, daemon=True,
                                                    name="audit-forwarder-export")
        thread.start()
        deadline = self.settings.timeout + EXPORT_GRACE
        thread.join(deadline)
        if thread.is_alive():
            session = session_of(exporter)
            if session is not None:
                session.abort()  # the request fails now, and its thread ends
                thread.join(EXPORT_GRACE)
            # ``exporter`` is ``self._exporter`` (only this thread replaces it): shut
            # down once, also when stop() got there first.
            self._shutdown_exporter()
            if not self._stopping:  # (stop() shuts down the exporter it sees, this one)
                self._exporter = self._make_exporter(self.settings)
            raise ExportFailed(f"{self.settings.shown_endpoint} did not answer within {deadline:g}s "
                               f"(forward_timeout + {EXPORT_GRACE:g}s); the request is "
                               f"abandoned and the batch sent again")
        self._in_flight = None
        outcome = answer[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _start_position(self) -> int:
        if self._position is None:
            newest = self._newest_record() if self.settings.start == "now" else None
            self._position = 0 if newest is None else int(newest["seq"])
            self._mark = None if newest is None else newest["id"]
            self.checkpoint.save(self.settings.endpoint, self._position, self._mark)
            log.info("forwarder: no checkpoint for %s; starting after seq %d (%s)",
                     self.settings.shown_endpoint, self._position, self.settings.start)
        return self._position

    def _check_store(self, position: int) -> bool:
        """Whether this store is the one the checkpoint was written for, as far as can be
        told: False while it holds no record at the checkpoint's seq yet (to be asked
        again). A seq alone took a replaced data directory for the old one: what it
        stored up to that seq was never sent, and the rest followed without a word."""
        page = q.search(self.data_dir, q.Filters(), limit=1,
                        cursor=q.cursor_after(position - 1), newest_first=False)
        if not page.records:
            self._wait_ahead(position)
            return False
        found = page.records[0]
        # A record after the seq only: retention deleted the one there (``skipped``).
        # No mark: a checkpoint of an older version (given one at the next save).
        if found["seq"] == position and self._mark is not None and found["id"] != self._mark:
            self._start_over(position, found["id"])
        # Only once the start over is saved: a save that failed (disk full) left the
        # position at the other store's seq, and marked checked, the retry went on after
        # it and this store's records up to it were never sent.
        self._checked = True
        return True

    def _wait_ahead(self, position: int) -> None:
        """No record at the checkpoint's seq yet: right after a start the index may be
        catching up (the record is there, and so are the ones before it), or the store
        is another one, whose record at that seq will tell. Either way nothing is sent
        until it does; the records held back meanwhile are lag, not caught up."""
        oldest = q.search(self.data_dir, q.Filters(), limit=1, newest_first=False).records
        self._refresh_newest([])
        with self._lock:
            self._first_pending = oldest[0]["seq"] if oldest else 0
            self._oldest_pending_us = created_micros(oldest[0]["created"]) if oldest else None
            self.state = "ahead"
        if not self._warned_ahead:
            self._warned_ahead = True
            then = ("if it is another event than the checkpoint's, this data directory is "
                    "not the one the checkpoint was written for and forwarding starts over "
                    "from its beginning" if self._mark is not None else
                    "the checkpoint, written by an older version, names no event, so "
                    "forwarding then goes on after it, whatever store this is")
            log.warning("forwarder: the checkpoint (seq %d) is beyond the newest stored seq "
                        "%d: nothing is forwarded until a record is stored at seq %d; %s. "
                        "To forward this store from forward_from now, stop the collector "
                        "and move %s away", position, self._newest, position, then,
                        self.checkpoint.path)

    def _start_over(self, position: int, found: str) -> None:
        """The record at the checkpoint's seq is another event: the checkpoint counts the
        records of another store. Which records of this one the endpoint has is unknown,
        so all are sent: duplicates (same ``log.record.uid``) rather than a silent gap,
        whatever ``forward_from`` says (``now`` would pass over the records this store
        received before it was noticed, held back meanwhile)."""
        log.error("forwarder: the checkpoint %s names event %s at seq %d, but this data "
                  "directory stores event %s there: it was written for another store (the "
                  "data directory replaced, or restored from an older backup). Forwarding "
                  "to %s starts over from the beginning of this store: records the "
                  "endpoint already has are sent again, with the same log.record.uid",
                  self.checkpoint.path, terminal_safe(self._mark or ""), position,
                  terminal_safe(found), self.settings.shown_endpoint)
        self.checkpoint.save(self.settings.endpoint, 0, None)
        with self._lock:
            self._position, self._mark = 0, None
        self._gone_upto = None  # (another store's numbers)

    def _newest_record(self) -> dict[str, Any] | None:
        try:
            page = q.search(self.data_dir, q.Filters(), limit=1, newest_first=True)
        except q.QueryError:
            return None  # no index yet: nothing stored
        return page.records[0] if page.records else None

    def _refresh_newest(self, batch: list[dict[str, Any]]) -> None:
        record = self._newest_record()
        newest = 0 if record is None else int(record["seq"])
        if batch:
            newest = max(newest, batch[-1]["seq"])
        with self._lock:
            self._newest = newest

    def _skipped(self, position: int, first: int) -> None:
        """The records between ``position`` and ``first`` are gone (retention): counted
        and said when first seen, once. Counted only once the checkpoint passed them, the
        records retention deleted during an outage showed as none (``skipped`` 0, no line
        in the log) for as long as it lasted, days maybe: the loss was seen only once it
        was over. Counted at each sight, every retry counted the same gap again."""
        since = position if self._gone_upto is None else max(position, self._gone_upto)
        gone = first - since - 1
        if gone <= 0:
            return
        self._gone_upto = first - 1
        with self._lock:
            self.skipped += gone
        log.warning("forwarder: %d records after seq %d are no longer stored (deleted by "
                    "retention before they were forwarded); forwarding goes on at seq %d",
                    gone, since, first)

    # -- figures --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            position = self._position or 0
            # Ahead of the store, the checkpoint says nothing of the records held back:
            # all are lag (they showed as none, caught up).
            after = position if self._checked else 0
            # Counted from the first record still stored after the checkpoint: those
            # retention deleted before they were forwarded (a new endpoint starting from
            # the beginning of a store) are no lag, they are gone (``skipped``).
            lag_events = max(0, self._newest - max(after, self._first_pending - 1))
            oldest = self._oldest_pending_us
            lag_seconds = (max(0.0, time.time() - oldest / 1e6)
                           if lag_events and oldest is not None else 0.0)
            return {
                "endpoint": self.settings.shown_endpoint,
                "state": self.state,
                "checkpoint_seq": position,
                "newest_seq": self._newest,
                "lag_events": lag_events,
                "lag_seconds": round(lag_seconds, 3),
                "forwarded": self.forwarded,
                "batches": self.batches,
                "failures": self.failures,
                "skipped": self.skipped,
                "rejected": self.rejected,
                "last_error": self.last_error,
            }


class ExportFailed(RuntimeError):
    """The endpoint did not accept a batch; it is retried."""
