"""The API's query connections: a few ``collector.query.Reader`` objects, one per worker
thread, so index lookups and segment reads never block the event loop (which also runs
the ingest server) and a burst of panel users cannot open a connection each.

A query waits at most ``THREAD_WAIT`` seconds for a free thread, then is refused
(``QueriesBusy``: 503 with ``Retry-After``): on a hung data disk (a dying disk, a frozen
network file system) every thread stays in a read, and each later request queued behind
them for good. Daemon threads, as ``collector.disk_calls``'s: a ``ThreadPoolExecutor``'s
threads are joined at the stop and again at exit, so one held by the disk held the
process's stop for good; ``close`` waits for them a bounded time instead.

Once taken, a query runs ``query_timeout`` seconds at most (``QueryTimeoutError``: 503
``query_timeout``), then its thread is free for the next one: four broad queries over a
large store held every thread, and every panel user was answered 503, for as long as
they ran. The limit is each job's (an export's page, not the whole export).

So a thread still in one job ``THREAD_WAIT`` seconds past ``query_timeout`` is in a read
the disk does not answer (the limit stops any query whose reads return): a query refused
while any thread is so held is told ``QueriesHung``, the disk, not ``QueriesBusy``, which
sends an operator to add threads that would hang too.

Its own caller waits that long at most too (``query_timeout`` + ``THREAD_WAIT`` from when
it saw its job taken), then is answered ``QueriesHung``: it waited for a read that does
not end, and its client (a panel page, an export's next page) with it, until the client
gave up. The thread cannot be stopped: it is left in its read, and what the read returns
if the disk ever answers is dropped with the job. With no limit (``query_timeout`` None)
a long query cannot be told from a hung one: its caller waits for it, however long.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from typing import Any, Final, Generic, NoReturn, TypeVar

from collector.disk_calls import DiskLate
from collector.index_connections import index_file_said_by_the_collector
from collector.query import IndexUnavailableError, Reader
from collector.storage.in_the_way import said_by_the_collector
from collector.storage.regular_files import NotRegularFileError
from collector.storage.time_limit import QUERY_TIMEOUT, QueryTimeoutError, time_limit

T = TypeVar("T")
DEFAULT_THREADS: Final = 4
#: Seconds a query waits for a free query thread before it is answered 503; and, with a
#: ``query_timeout``, for its own read past that limit (``QueryPool._outcome``).
THREAD_WAIT: Final = 10.0
#: Why a query is refused, each counted as ``queries_refused_<reason>`` (``/metrics``).
REFUSALS: Final = ("busy", "hung", "query_timeout")

log = logging.getLogger("collector.api")


class QueriesBusy(DiskLate):
    """Every query thread stayed busy for ``THREAD_WAIT`` seconds: refused (503).
    ``reason``: the cause alone, for an export past its first bytes (which was read
    and recorded, so the 503's "nothing was read or recorded" is not true of it)."""

    def __init__(self, threads: int) -> None:
        self.reason = busy_reason(threads)
        super().__init__(busy_message(threads))


class QueriesHung(QueriesBusy):
    """Refused as ``QueriesBusy``, while ``held`` of the ``threads`` have been in one job
    for more than ``overdue`` seconds (``query_timeout`` + ``THREAD_WAIT``): reads the
    data disk does not answer, which more threads would not help."""

    def __init__(self, threads: int, held: int, overdue: float,
                 query_timeout: float, *, taken: bool = False) -> None:
        #: True: the refused job was taken, its thread is one of the ``held`` (its own
        #: read did not end); False: no thread took it.
        self.taken = taken
        self.reason = hung_reason(threads, held, overdue, query_timeout)
        DiskLate.__init__(self, f"{self.reason}; nothing was read or recorded: try again "
                                f"once the disk answers")


@dataclass
class _Job(Generic[T]):
    work: Callable[[Reader], T]
    #: Running once a thread took it; cancelled by a caller that stopped waiting first.
    result: concurrent.futures.Future[T] = field(default_factory=concurrent.futures.Future)
    #: Set once a thread took it (a concurrent future has no callback for that).
    taken: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)
    #: The id of the thread that took it (set before it is taken).
    thread: int | None = None


def _abandoned(reader: Reader) -> NoReturn:
    raise AssertionError("a job its caller stopped waiting for is never run")


class QueryPool:
    def __init__(self, data_dir: Path, threads: int = DEFAULT_THREADS,
                 query_timeout: float | None = QUERY_TIMEOUT) -> None:
        if threads < 1:
            raise ValueError(f"the query API needs at least 1 query thread, got {threads}")
        if query_timeout is not None and not query_timeout > 0:  # nan too
            raise ValueError(f"query_timeout must be a positive number of seconds (or None "
                             f"for no limit), got {query_timeout}")
        self.data_dir = Path(data_dir)
        self._size = threads
        self._query_timeout = query_timeout
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._ended: list[concurrent.futures.Future[None]] = []
        self._lock = threading.Lock()
        self._closed = False
        #: When each thread in a job (by thread id) took it: how long it has been in it.
        self._taken_at: dict[int, float] = {}
        #: Queries refused (``queries_refused`` and by reason, ``REFUSALS``), counted
        #: here where they are raised: once each, whether the refusal is a request's
        #: 503 or cuts an export after its first bytes. A caller cancelled first (an
        #: export whose client left, a request cut at a stop) is not counted; a request
        #: whose client closed its connection is not cancelled by the server, and is.
        #: Incremented on the event loop only (``stats`` copies them from any thread).
        self.counters: Counter[str] = Counter()

    async def run(self, work: Callable[[Reader], T]) -> T:
        """``work(reader)`` on a query thread, with a Reader of that thread's own;
        ``QueriesBusy`` when no thread takes it within ``THREAD_WAIT`` seconds
        (``QueriesHung`` when a thread is in a read the disk does not answer, this one's
        included: see ``_outcome``)."""
        job: _Job[T] = _Job(work)
        # Only the job holds it from here: this frame outlives the call in a cancelled
        # caller's traceback (Python 3.12 and later: wait_for awaits this coroutine in
        # the caller's own task), and would keep the page an abandoned job let go of.
        del work
        self._submit(job)
        try:
            return await self._answer(job)
        except QueriesHung:  # before its base, QueriesBusy
            self._refused("hung")
            raise
        except QueriesBusy:
            self._refused("busy")
            raise
        except QueryTimeoutError:
            self._refused("query_timeout")
            raise

    def _refused(self, reason: str) -> None:
        self.counters["queries_refused"] += 1
        self.counters[f"queries_refused_{reason}"] += 1

    def stats(self) -> dict[str, int]:
        """The refusals counted, for ``/metrics`` and ``stats`` (called from other
        threads too: reads only)."""
        return dict(self.counters)  # one C-level copy: safe from a scraper's thread

    async def _answer(self, job: _Job[T]) -> T:
        """``job``'s outcome once a thread takes it within ``THREAD_WAIT``, else the
        refusal (``_refusal``)."""
        try:
            await asyncio.wait([asyncio.wrap_future(job.taken)], timeout=THREAD_WAIT)
        finally:
            # A caller gone (a timeout, a cancelled request) leaves no job to run: the
            # cancel succeeds only while no thread has taken it, atomically with taking.
            abandoned = job.result.cancel()
            if abandoned:
                # It stays queued until a thread comes to it, for as long as the disk
                # hangs if that is why: without its work, which may hold a page (an
                # export's next job holds the records it renders).
                job.work = _abandoned
        if abandoned:
            raise self._refusal()
        return await self._outcome(job)

    async def _outcome(self, job: _Job[T]) -> T:
        """A taken job's outcome, waited for ``query_timeout`` + ``THREAD_WAIT`` at most."""
        answer = asyncio.wrap_future(job.result)
        if self._query_timeout is None:
            return await answer  # no limit: a long query cannot be told from a hung one
        # The limit stops any query whose reads return: still running past it (and the
        # same wait for a thread, for a loaded machine's lag), the job is in a read the
        # disk does not answer, which its thread cannot be taken out of.
        try:
            await asyncio.wait([answer], timeout=self._query_timeout + THREAD_WAIT)
        finally:
            # Only the wrapper (a no-op once done): the thread stays in its read, and what
            # it ends with is dropped (a cancelled wrapper takes nothing from it), so
            # nothing outlives the job but that thread's frame while the read lasts.
            answer.cancel()
        if not answer.cancelled():
            return answer.result()
        if job.result.done():  # it ended as the wait did: its outcome stands
            return job.result.result()
        raise self._refusal(taken_by=job.thread)

    def _refusal(self, taken_by: int | None = None) -> QueriesBusy:
        """Why a job is refused: ``QueriesHung`` if a thread is in a job the limit should
        have stopped ``THREAD_WAIT`` ago (``taken_by``, the job's own thread, is: its
        caller waited that long); else busy (or no limit to tell by)."""
        if self._query_timeout is None:
            return QueriesBusy(self._size)
        overdue = self._query_timeout + THREAD_WAIT
        now = monotonic()
        with self._lock:
            held = sum(now - taken > overdue for thread, taken in self._taken_at.items()
                       if thread != taken_by)
        if taken_by is not None:
            held += 1  # held by its caller's clock, whatever this one says: counted once
        if held:
            return QueriesHung(self._size, held, overdue, self._query_timeout,
                               taken=taken_by is not None)
        return QueriesBusy(self._size)

    def _submit(self, job: _Job[Any]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the query API is stopping: no more queries")
            if len(self._ended) < self._size:
                self._start_thread()
        self._jobs.put(job)

    def _start_thread(self) -> None:
        ended: concurrent.futures.Future[None] = concurrent.futures.Future()
        # One per thread started: how many there are, and what a stop waits for.
        threading.Thread(target=self._serve, args=(ended,), daemon=True,
                         name=f"audit-api-query-{len(self._ended)}").start()
        self._ended.append(ended)

    def _serve(self, ended: concurrent.futures.Future[None]) -> None:
        reader: Reader | None = None
        try:
            while (job := self._jobs.get()) is not None:
                reader = self._run(job, reader)
                # Not held while waiting for the next: an idle thread kept its last job,
                # the answer (an export's page and its bytes) and the work's page with it.
                del job
        finally:
            if reader is not None:
                reader.close()
            ended.set_result(None)

    def _run(self, job: _Job[Any], reader: Reader | None) -> Reader | None:
        """``job`` on this thread's Reader (opened at its first job); returns the Reader."""
        thread = job.thread = threading.get_ident()  # before: its caller may look any time
        if not job.result.set_running_or_notify_cancel():
            return reader  # its caller stopped waiting (503) before it was taken
        job.taken.set_result(None)
        with self._lock:
            self._taken_at[thread] = monotonic()
        try:
            if reader is None:
                reader = Reader(self.data_dir)
            with time_limit(self._query_timeout, "query_timeout"):
                outcome = job.work(reader)
        except NotRegularFileError as exc:
            # Worded for a command ("run this again"): said to whoever reads the
            # collector's log, what an operator does for a running collector.
            job.result.set_exception(self._said_by_the_collector(exc))
        except BaseException as exc:  # noqa: BLE001 - raised in the caller
            job.result.set_exception(exc)
        else:
            job.result.set_result(outcome)
        finally:
            with self._lock:
                del self._taken_at[thread]
        return reader

    def _said_by_the_collector(self, exc: NotRegularFileError) -> Exception:
        """``exc`` in the running collector's words: a segment file's, or the index's
        (answered as an index that cannot answer: 503, ``queries_refused_index``)."""
        if (words := index_file_said_by_the_collector(exc, self.data_dir)) is not None:
            return IndexUnavailableError(words)
        return said_by_the_collector(exc, self.data_dir / "segments") or exc

    def _stop(self) -> list[concurrent.futures.Future[None]]:
        """No more queries; each thread ends once its query (if any) ends."""
        with self._lock:
            if self._closed:
                return []
            self._closed = True
            ended = list(self._ended)
        for _ in ended:
            self._jobs.put(None)
        return ended

    def close(self, timeout: float | None = None) -> int:
        """Stop, waiting ``timeout`` seconds at most (None: as long as it takes) for the
        threads to end; how many are still in a query then (left: daemon threads)."""
        ended = self._stop()
        _, running = concurrent.futures.wait(ended, timeout)
        return self._left(len(running))

    async def aclose(self, timeout: float) -> int:
        """``close`` for the event loop: waited for without holding it."""
        ended = [asyncio.wrap_future(future) for future in self._stop()]
        if not ended:
            return 0
        _, running = await asyncio.wait(ended, timeout=timeout)
        for waiter in running:
            waiter.cancel()  # only the wrapper: the thread runs on
        return self._left(len(running))

    @staticmethod
    def _left(running: int) -> int:
        if running:
            log.warning("query API: %d query thread(s) still in a query at the stop (a "
                        "hung data disk?): left behind, the stop goes on", running)
        return running


def busy_reason(threads: int) -> str:
    return (f"all {threads} query threads stayed busy for {THREAD_WAIT:g} s: the data "
            f"disk may not answer (a hung disk, a frozen network file system) or the "
            f"collector is overloaded")


def hung_reason(threads: int, held: int, overdue: float, query_timeout: float) -> str:
    return (f"the disk under the store does not answer: {held} of the {threads} query "
            f"threads have been in one read for more than {overdue:g} s, past "
            f"query_timeout ({query_timeout:g} s), which stops every query whose reads "
            f"return; more query threads would hang too (a hung disk, a frozen network "
            f"file system: check the data disk)")


def busy_message(threads: int) -> str:
    return f"{busy_reason(threads)}; nothing was read or recorded: try again later"
