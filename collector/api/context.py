"""What the endpoints share: settings, reader accounts, panel sessions, the query pool
and the recorder of reads."""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from starlette.requests import Request

from collector import metrics
from collector.disk_calls import DiskCalls
from collector.readers import Reader, Readers
from collector.single_flight import SingleFlight, Unanswered
from collector.storage.time_limit import QUERY_TIMEOUT

from .auth import AuthError, ReadersLate, Sessions, authenticate, forbidden
from .denials import Attempt, DenialLimiter, Refusals, Unrecorded
from .queries import DEFAULT_THREADS, QueryPool
from .reads import ReadRecorder, Submitter
from .unavailable import reason_of

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
_TRACE_ID: Final = re.compile(r"[0-9a-f]{32}")
_SPAN_ID: Final = re.compile(r"[0-9a-f]{16}")
#: Threads the API's writes to the data disk (acknowledgements of losses) may hold at
#: once, however long a hung disk holds them (``collector.disk_calls``).
DISK_THREADS: Final = 4


@dataclass(frozen=True)
class ApiSettings:
    data_dir: Path
    #: e.g. "https://jaeger.example/trace/{trace_id}" (checked by collector.options)
    trace_url_template: str | None = None
    #: served over TLS: session cookies get ``Secure``, responses HSTS
    tls: bool = False
    #: the origin browsers reach the panel at behind a reverse proxy (``api_public_url``):
    #: sign-in accepts it; an https one makes the session cookie ``Secure``
    public_origin: str | None = None
    query_threads: int = DEFAULT_THREADS
    #: seconds a query may run once a query thread took it (None: no limit)
    query_timeout: float | None = QUERY_TIMEOUT
    #: listening on loopback only: requests naming another host are refused, against
    #: DNS rebinding (``collector.api.hosts``); False for any other address
    loopback: bool = False


class Api:
    def __init__(self, settings: ApiSettings, store: Submitter,
                 readers: Readers | None = None, sessions: Sessions | None = None) -> None:
        self.settings = settings
        self.readers = readers if readers is not None else Readers(settings.data_dir)
        self.sessions = sessions if sessions is not None else Sessions()
        self.pool = QueryPool(settings.data_dir, settings.query_threads,
                              settings.query_timeout)
        self.store = store
        self.recorder = ReadRecorder(store)
        self.denials = DenialLimiter()
        self._readers_read = SingleFlight(self.readers.refresh,
                                          "the readers file (readers.json)")
        #: The store's stats (the losses listing): serve hands over the one /metrics
        #: and its stats task share (``Integrations.attach``), so that a hung disk
        #: holds one thread for them all.
        self.store_stats: SingleFlight[dict[str, Any]] = SingleFlight(
            functools.partial(_stats_of, store), "audit-store-stats")
        self.disk = DiskCalls(DISK_THREADS, "audit-api-disk")
        #: Exports whose download failed after their first bytes, by reason
        #: (``export_cuts.count_cut``). Incremented on the event loop.
        self.export_cuts: Counter[str] = Counter()
        #: Requests answered 503 for a reason of ``unavailable.REASONS`` (the pool
        #: counts its own), by ``queries_refused_<reason>``. Incremented on the event
        #: loop.
        self.unavailable: Counter[str] = Counter()

    def count_unavailable(self, kind: type[BaseException]) -> None:
        """Count a request answered 503 for an exception of ``kind``, once: not if the
        query pool counted it where it was raised (``unavailable.reason_of``)."""
        reason = reason_of(kind)
        if reason is not None:
            self.unavailable[f"queries_refused_{reason}"] += 1

    def stats(self) -> dict[str, int]:
        """The queries refused and the exports cut, for ``/metrics`` and ``stats``
        (called from other threads too: reads only, of C-level copies)."""
        pool, answered = self.pool.stats(), dict(self.unavailable)
        # queries_refused is every refusal: the pool's and those answered here.
        total = pool.get("queries_refused", 0) + sum(answered.values())
        return {**pool, **self.export_cuts, **answered, "queries_refused": total}

    async def fresh_readers(self) -> None:
        """Have ``readers`` read ``readers.json`` again if it changed, before a credential
        is checked against it; ``ReadersLate`` if that does not end within
        ``SHARED_WAIT``. The file is on the data disk, and the loop is ingest's and
        ``/healthz``'s too: a stat there on a hung disk froze them all. One thread reads
        it for every request that waits (``/metrics`` included), one that starts after
        the request came, so a reader removed just before is refused."""
        try:
            await self._readers_read.read(metrics.SHARED_WAIT, fresh=True)
        except Unanswered:
            raise ReadersLate() from None

    async def reader(self, request: Request) -> Reader:
        """The reader making this request (root or not), or ``AuthError``."""
        return await authenticate(request, self.readers, self.sessions, self.fresh_readers)

    async def root_reader(self, request: Request) -> Reader:
        return self.check_root(await self.reader(request))

    async def token_reader(self, token: str) -> Reader | None:
        """The reader whose token this is, or None (``Readers.authenticate``)."""
        await self.fresh_readers()
        return self.readers.authenticate(token, refresh=False)

    @staticmethod
    def check_root(reader: Reader) -> Reader:
        if not reader.root:
            raise forbidden(reader)
        return reader

    async def record_denial(self, request: Request, exc: AuthError) -> None:
        """Record a refused attempt (see ``collector.api.denials``), rate limited."""
        if exc.denied is None:
            return
        attempt = Attempt(request.client.host if request.client else "", exc.denied,
                          exc.principal, request.url.path, request.method, exc.status)
        attempts = self.denials.admit(attempt)
        await self.report_unrecorded()
        if attempts:
            await self._write_denial(Refusals(attempt, attempts))

    async def report_unrecorded(self, *, now: bool = False) -> None:
        """Write what the denials' limiter kept back, once its window is over (``now``:
        at once, at shutdown): the attempts counted per client since its record, and
        those past the budgets (the anonymous one, each reader's). Called with each
        refusal and every second by the server, so a flood that stops, or a client that
        does not come back, is reported all the same."""
        reports = self.denials.unrecorded(now=now)
        for n, report in enumerate(reports):
            try:
                await self._write_denial(report)
            except BaseException:
                for unwritten in reports[n:]:  # reported by the next try instead
                    self.denials.give_back(unwritten)
                raise

    async def _write_denial(self, report: Refusals | Unrecorded) -> None:
        if isinstance(report, Refusals):
            latest = report.latest
            await self.recorder.record_denial(
                latest.reader, target=latest.target, client_ip=latest.client_ip or None,
                details={"status": latest.status, "reason": latest.reason,
                         "attempts": report.attempts, "method": latest.method})
        else:
            await self.recorder.record_denial(
                report.reader, target="(many)", client_ip=None,
                details={"reason": "too many refusals to record one by one",
                         "attempts": report.attempts, "clients": report.clients})

    async def record(self, kind: str, reader: Reader, request: Request, target: str,
                     details: dict[str, Any]) -> str:
        return await self.write_record(self.own_record(kind, reader, request, target,
                                                       details))

    def own_record(self, kind: str, reader: Reader, request: Request, target: str,
                   details: dict[str, Any]) -> dict[str, Any]:
        """The record ``record`` writes, not written yet: for what must name its id
        before it is written (an acknowledgement of losses)."""
        client = request.client.host if request.client else None
        return self.recorder.event(kind, reader, target=target, details=details,
                                   client_ip=client)

    async def write_record(self, record: dict[str, Any]) -> str:
        return await self.recorder.write(record)

    def trace_url(self, record: dict[str, Any]) -> str | None:
        template = self.settings.trace_url_template
        trace_id, span_id = record.get("trace_id"), record.get("span_id") or ""
        if not template or not isinstance(trace_id, str) or not _TRACE_ID.fullmatch(trace_id):
            return None
        if not isinstance(span_id, str) or (span_id and not _SPAN_ID.fullmatch(span_id)):
            span_id = ""
        return template.replace("{trace_id}", trace_id).replace("{span_id}", span_id)

    def close(self, timeout: float | None = None) -> int:
        """The query threads stopped, waited for ``timeout`` seconds at most (None: as long
        as they take); how many were left in a query (``QueryPool.close``)."""
        return self.pool.close(timeout)

    async def aclose(self, timeout: float) -> int:
        """``close`` for the event loop (serve's stop)."""
        return await self.pool.aclose(timeout)


def _stats_of(store: Any) -> dict[str, Any]:
    stats: dict[str, Any] = store.stats()  # serve's Store (a Submitter has no stats)
    return stats
