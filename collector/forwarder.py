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
  Nothing is skipped (but a record refused alone under ``forward_on_refused`` "skip",
  below), so a receiver that keeps refusing a batch stops the forwarder visibly
  (``state``, ``last_error``, growing lag) rather than losing records silently.
  Logged at the 1st, 2nd, 4th, ... failure in a row, and at the first success after
  them; the exporter's own lines only with those (``exporter_lines``).
- **A hung data disk**: the records are read on a reader thread (``forward_reads``); a
  read that has not returned after ``READ_STALL`` seconds is logged once, ``state``
  "waiting_on_disk" (``disk_waiting``, ``disk_hung``) meanwhile; the stop leaves it to
  the disk (one not yet said hung gets ``STOP_GRACE``), and once it returns forwarding
  goes on with it: nothing skipped, nothing sent twice. Ingest never waits on it.
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
  records before that one are accepted, and the one refused is retried alone (with
  ``forward_on_refused`` "hold", never skipped: ``last_error`` names its seq); once it
  is accepted, batches are full again.
  A 400 may be a body limit too: a narrowed size accepted is kept, and doubled after
  ``PROBE_AFTER`` exports accepted at it (twice as many after each larger size refused).
- **A record refused alone** (``forward_on_refused``): "hold", the default, is the above.
  "skip" gives it up after ``SKIP_AFTER`` answers in a row refused it on its own with a
  400 (a 400 to several never counts: a body limit): the checkpoint moves past it,
  keeping its seq, id and the receiver's reason (the last ``KEPT``); counted
  (``skipped_refused``) and logged at ERROR once saved. The backoff goes on growing
  until an export is accepted, and at most ``KEPT`` are skipped in a row with nothing
  accepted between them: a receiver that refuses every record has the next one held,
  not the whole store skipped (``forward_refused``).

The export itself is ``opentelemetry-exporter-otlp-proto-http``'s ``OTLPLogExporter``
(protobuf over HTTP, its own short retries inside ``timeout``). This module keeps the
loop and one step of it; its parts are modules of their own: the settings
(``forward_config``), the position in the store and ``skipped`` (``forward_position``),
the records per export (``forward_batch_size``), a record refused alone
(``forward_refused``), the store's reads (``forward_reads``), one export cut off at its
deadline (``forward_export``), failures in a row and the backoff after them
(``forward_backoff``), the records as log records (``otlp_records``), the exporter
(``otlp_http``) and the checkpoint file (``forward_checkpoint``).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Final

from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from audit_middleware import otel
from collector import query as q
from collector.forward_backoff import Backoff
from collector.forward_batch_size import HTTP_BAD_REQUEST, HTTP_TOO_LARGE, BatchSize
from collector.forward_checkpoint import CHECKPOINT_FILE, CheckpointFile
from collector.forward_config import ForwardSettings
from collector.forward_export import ExporterFactory, ExportFailed, ExportWithDeadline
from collector.forward_position import StorePosition
from collector.forward_reads import ReadLeftBehind, StoreReads
from collector.forward_refused import KEPT, SKIP_AFTER, RefusedInARow, SkippedRecord
from collector.otlp_http import (
    failure_of,
    otlp_http_exporter,
    rejected_by_receiver,
    retry_after_of,
    session_of,
    status_of,
)
from collector.otlp_records import to_log_records, within_budget
from collector.render import terminal_safe
from collector.storage.records import created_micros

__all__ = ["ExportFailed", "Forwarder"]

log = logging.getLogger("collector.forward")

#: Seconds a stop waits for the export in flight before cutting it off: an answering
#: endpoint answers well within it.
STOP_GRACE: Final = 1.0


# -- the forwarder --------------------------------------------------------------------------------
class Forwarder(StorePosition, ExportWithDeadline, Backoff):
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
        #: The store's reads, on a thread of their own (a hung disk: ``forward_reads``).
        self._reads = StoreReads(self.data_dir, lambda: self._stopping)
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
        #: Records refused alone with 400 and given up (forward_on_refused = "skip").
        self.skipped_refused = 0
        self._last_skipped_refused: str | None = None  # "seq N (event ID)", for stats
        self._refusals = RefusedInARow(settings.on_refused)
        #: The highest seq ``skipped`` counted (None: none yet since the position was set).
        self._gone_upto: int | None = None
        self.last_error: str | None = None
        self._newest = 0
        self._first_pending = 0  # the seq of the first record after the checkpoint
        self._oldest_pending_us: int | None = None
        self._delay = settings.backoff_initial
        self._warned_ahead = False
        #: How many records the next export may carry (413s and 400s narrow it).
        self._size = BatchSize(settings)
        #: The Retry-After of the answer that failed the last step (None: none asked).
        self._asked: float | None = None
        self._shut_down: LogRecordExporter | None = None  # (a second shutdown warns)

    # -- control --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-forwarder",
                                            daemon=True)
            self._thread.start()

    @property
    def position(self) -> int | None:
        """The seq the checkpoint holds (None: none for this endpoint yet, decided by the
        first step from ``forward_from``)."""
        with self._lock:
            return self._position

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
        self._reads.interrupt()  # a read the disk does not answer is left to it
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
        # Its Readers closed (the index's connection, segment files): waited for unless
        # it is in a read said hung, which the stop does not wait for.
        self._reads.close(min(timeout, STOP_GRACE))
        self.state = "stopped"

    # -- the loop -------------------------------------------------------------------------
    def _run(self) -> None:
        # The Readers are the reader thread's (``_reads``), closed by the stop.
        while not self._stopping:
            try:
                sent = self.step()
            except ReadLeftBehind:
                break  # stopped during a read: nothing read, nothing to save
            except Exception as exc:  # noqa: BLE001 - any failure: keep the batch, back off
                self._failed(exc)
                self._wait(self._backoff())
                continue
            if sent == 0:
                self._wait(self.settings.poll_interval)

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def step(self) -> int:
        """Export the next batch, if any: the records the checkpoint moved past,
        acknowledged or one skipped as refused (0 when caught up, or while the checkpoint
        is ahead of the store: ``_check_store``). Raises when the export failed (nothing
        acknowledged, the checkpoint unchanged)."""
        # Kept by the session until its next request: read for a failure other than
        # that answer (the index unreadable), it made that one wait as long again.
        self._asked = None
        position = self._start_position()
        if not self._checked:
            if not self._check_store(position):
                return 0  # ahead: waits for the record at the checkpoint's seq
            position = self._start_position()  # (0 if the store was another one)
        page = self._search(limit=self.settings.batch_size, cursor=q.cursor_after(position),
                            newest_first=False)
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
        fit = self._size.limit(within_budget(batch))
        batch, records = batch[:fit], records[:fit]
        result = self._export(batch)
        # A "success" with a failure is a redirect (the exporter takes 3xx for 2xx):
        # the endpoint received nothing, and the checkpoint must not move.
        refusal = failure_of(self._exporter)
        if result is not LogRecordExportResult.SUCCESS or refusal is not None:
            status = status_of(self._exporter)
            if status == HTTP_TOO_LARGE:
                self._size.too_large(len(records))
            elif status == HTTP_BAD_REQUEST:
                self._size.bad_request(len(records))
            self._asked = retry_after_of(self._exporter)
            why = refusal or "see the log of opentelemetry.exporter"
            # Only a record refused alone: a 400 to several may be a body limit (the
            # narrowing above), never a reason to give up a record.
            if status == HTTP_BAD_REQUEST and len(records) == 1:
                if self._refusals.refused_alone(first):
                    return self._skip_refused(records[0], why)
                if self._refusals.held_for_want_of_acceptance() and not self._refusals.hold_said:
                    self._refusals.hold_said = True
                    log.error("forwarder: %s refused the record at seq %d on its own %d "
                              "times too, after %d records skipped in a row with nothing "
                              "taken between them: held, not skipped (a receiver refusing "
                              "every record would have the whole store skipped); see what "
                              "it refuses (%s): forwarding goes on once it takes the record",
                              self.settings.shown_endpoint, first, self._refusals.times,
                              KEPT, terminal_safe(why))
            elif status is not None:  # (no answer: neither a refusal nor the row's end)
                self._refusals.answered()
            raise ExportFailed(f"{self.settings.shown_endpoint} did not accept {len(records)} "
                               f"records (seq {first}-{records[-1]['seq']}): {why}")
        self._recovered()
        self._refusals.accepted()
        self._size.accepted(len(records))
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

    def _skip_refused(self, record: dict[str, Any], why: str) -> int:
        """Give up ``record``, refused alone ``SKIP_AFTER`` times in a row (``forward_on_
        refused = "skip"``): the checkpoint moves past it, keeping its seq, id and the
        receiver's reason; counted and logged once saved (a save that failed has it sent
        again). The backoff is not reset: a receiver refusing every record has them
        skipped one at a time at the longest backoff, not the store drained at once."""
        seq, event_id = int(record["seq"]), str(record["id"])
        self.checkpoint.save(self.settings.endpoint, seq, event_id,
                             SkippedRecord.now(seq, event_id, why))
        self._refusals.skipped()
        self._size.skipped_alone()
        with self._lock:
            self._position = seq
            self.failures += 1  # (this export failed too: no _failed for it)
            self.skipped_refused += 1
            self._last_skipped_refused = f"seq {seq} ({event_id})"
            self.state = "forwarding"
            self.last_error = None
        log.error("forwarder: %s refused the record at seq %d (event %s) on its own %d times "
                  "in a row; skipped (forward_on_refused = skip), it is not forwarded, "
                  "forwarding goes on after it (%s keeps its seq and id): %s",
                  self.settings.shown_endpoint, seq, event_id, SKIP_AFTER,
                  self.checkpoint.path, terminal_safe(why))
        return 1

    def _rejected(self, refused: tuple[int, str], first: int, last: int, sent: int) -> None:
        # A receiver may say more than it was sent (a count of its own, a bug): no more
        # than the batch was lost, and ``rejected`` counts records lost.
        count = min(refused[0], sent)
        said = f" (it said {refused[0]})" if refused[0] > sent else ""
        with self._lock:
            self.rejected += count
        log.error("forwarder: %s rejected %d of the %d records of seq %d-%d%s: %s",
                  self.settings.shown_endpoint, count, sent, first, last, said,
                  terminal_safe(refused[1]) or "(no reason given)")

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
                # While a read hangs, the state of the step it holds says nothing.
                "state": "waiting_on_disk" if self._reads.waiting else self.state,
                "checkpoint_seq": position,
                "newest_seq": self._newest,
                "lag_events": lag_events,
                "lag_seconds": round(lag_seconds, 3),
                "forwarded": self.forwarded,
                "batches": self.batches,
                "failures": self.failures,
                "skipped": self.skipped,
                "rejected": self.rejected,
                "skipped_refused": self.skipped_refused,
                "last_skipped_refused": self._last_skipped_refused,
                "last_error": self.last_error,
                **self._reads.stats(),
            }
