"""One export of the forwarder, cut off at its deadline: the exporter runs on a thread
of its own, and past ``timeout`` + ``EXPORT_GRACE`` its connection and the exporter are
shut down and a new exporter is made for the retry (``ExportFailed``).

A mixin of ``Forwarder``: these methods read and set the forwarder's exporter and state,
under its lock, as they did in it; the attributes are declared below and set by
``Forwarder.__init__``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Final

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult

from audit_middleware._counter import worth_saying
from collector.forward_config import ForwardSettings
from collector.otlp_http import exporter_lines, session_of

__all__ = ["EXPORT_GRACE", "ExportFailed", "ExportWithDeadline", "ExporterFactory"]

log = logging.getLogger("collector.forward")  # the forwarder's lines, one logger

#: Time an export may take beyond ``timeout``: the exporter's timeout bounds each socket
#: read, not the request, and an endpoint trickling its answer held the forwarder for good.
EXPORT_GRACE: Final = 5.0

ExporterFactory = Callable[[ForwardSettings], LogRecordExporter]


class ExportFailed(RuntimeError):
    """The endpoint did not accept a batch; it is retried."""


class ExportWithDeadline:
    settings: ForwardSettings
    _lock: threading.Lock
    state: str
    _stopping: bool
    _streak: int
    _exporter: LogRecordExporter
    _make_exporter: ExporterFactory
    _in_flight: threading.Thread | None
    _shut_down: LogRecordExporter | None

    def _shutdown_exporter(self) -> None:
        exporter = self._exporter
        if exporter is self._shut_down:
            return
        self._shut_down = exporter
        try:
            exporter.shutdown()  # type: ignore[no-untyped-call]
        except Exception:
            log.debug("forwarder: exporter shutdown failed", exc_info=True)

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
