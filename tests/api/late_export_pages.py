"""``python -m collector`` whose exports are cut after their first bytes, while their
third page is read: export pages of ``PAGE`` records, and at that page, by ``FAULT`` (an
environment variable; ``query_timeout`` without it):

- ``query_timeout``: the query clock jumps far ahead (as if that read had taken longer
  than any limit);
- ``busy``: every query thread is taken by a read that does not end (a hung disk), so
  the next page waits for a thread past ``THREAD_WAIT`` (made short here); the reads are
  let go once that wait has failed;
- ``hung``: as ``busy``, the reads holding the threads in them past ``query_timeout``
  (the pool's clock jumps far ahead once all but one have begun: a hung disk, which
  that limit cannot stop);
- ``stuck``: the page's own read does not end (a hung disk), past ``query_timeout``
  (made 1 s here) and ``THREAD_WAIT`` (0.5 s); it is let go once its caller stopped
  waiting for it;
- ``index``: the read finds the index unavailable (``IndexUnavailableError``, as a
  rebuild under way shows it);
- ``segment``: a segment cannot be read (``CorruptSegmentError``, as a compressed
  segment without its block map in the index raises it);
- ``corrupt``: the read fails with ``sqlite3.DatabaseError`` (an index damaged on disk:
  unexpected, a fault).

No test can make a read slow, a disk hang or a file rot on cue; the limit, the pool and
its wait, and the export's handling of each are the real ones."""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
from typing import Any, Final

from collector.api import exports, queries
from collector.api.queries import QueriesBusy, QueryPool
from collector.cli import main
from collector.query import Reader
from collector.query_reader import _incomplete
from collector.storage import time_limit
from collector.storage.compression import CompressedReader

#: Records per export page here (the collector's: 1,000).
PAGE: Final = 2
#: The page whose read goes wrong: the first is read before the response starts, the
#: second's bytes are sent before the third is read.
LATE_PAGE: Final = 3
#: The environment variable that names the fault.
FAULT: Final = "LATE_EXPORT_FAULT"
FAULTS: Final = ("query_timeout", "busy", "hung", "stuck", "index", "segment", "corrupt")
#: Seconds a test waits for what must come: a bound on a failure, not a timing.
BOUND: Final = 60

search = Reader.search
monotonic = time_limit.monotonic
pool_monotonic = queries.monotonic
pool_init, pool_run = QueryPool.__init__, QueryPool.run
thread_wait = queries.THREAD_WAIT
_fault = os.environ.get(FAULT, "query_timeout")
_pages = itertools.count(2)  # the pages read on from a cursor: the 2nd, the 3rd, ...
_ahead = 0.0
_pool_ahead = 0.0  # the query pool's clock's, apart: the page read under way keeps its limit
_pools: list[QueryPool] = []
_hung = threading.Event()  # set: the reads holding the query threads end
_in_hung_reads = threading.Semaphore(0)  # released by each read that hangs


def _clock() -> float:
    return monotonic() + _ahead


def _pool_clock() -> float:
    return pool_monotonic() + _pool_ahead


def late_search(reader: Reader, *args: Any, **kwargs: Any) -> Any:
    global _ahead
    if kwargs.get("cursor") is None or next(_pages) != LATE_PAGE:
        return search(reader, *args, **kwargs)
    if _fault == "query_timeout":
        _ahead = 10.0**6  # past the limit of the query under way, not of later ones
    elif _fault in ("busy", "hung"):
        _hold_every_thread()
    elif _fault == "stuck":
        _hung.wait()
    elif _fault == "index":
        raise _incomplete(reader.data_dir / "index.sqlite",
                          sqlite3.DatabaseError("file is not a database"))
    elif _fault == "segment":
        first = min((reader.data_dir / "segments").iterdir())
        CompressedReader(first.with_name(first.name + ".gz"), [])  # raises: no block map
    else:
        raise sqlite3.DatabaseError("database disk image is malformed")
    return search(reader, *args, **kwargs)


def _hold_every_thread() -> None:
    """Queue one never-ending read per query thread, ahead of the export's next page
    (this thread, the export's, takes one once this page is answered)."""
    [pool] = _pools
    queries.THREAD_WAIT = 0.5  # type: ignore[misc]  # a job never taken: any wait fails
    for _ in range(pool._size):
        pool._submit(queries._Job(_hung_read))
    if _fault == "hung":
        global _pool_ahead
        # Every thread but this one (which takes the last read once this page is read)
        # is in its read: from now on, for far longer than any limit.
        for _ in range(pool._size - 1):
            if not _in_hung_reads.acquire(timeout=BOUND):
                raise AssertionError("the idle query threads never took their reads")
        _pool_ahead = 10.0**6


def _hung_read(reader: Reader) -> None:
    _in_hung_reads.release()
    _hung.wait()


def keep_pool(pool: QueryPool, *args: Any, **kwargs: Any) -> None:
    pool_init(pool, *args, **kwargs)
    _pools.append(pool)


async def run_then_release(pool: QueryPool, work: Any) -> Any:
    try:
        return await pool_run(pool, work)
    except QueriesBusy:
        _hung.set()  # the disk answers again: the next export finds its threads
        queries.THREAD_WAIT = thread_wait  # type: ignore[misc]
        raise


if __name__ == "__main__":
    if _fault not in FAULTS:
        raise SystemExit(f"{FAULT}={_fault!r}: expected one of {', '.join(FAULTS)}")
    exports.PAGE = PAGE  # type: ignore[misc]
    if _fault == "stuck":
        os.environ["AUDIT_QUERY_TIMEOUT"] = "1"
        queries.THREAD_WAIT = 0.5  # type: ignore[misc]
    time_limit.monotonic = _clock
    queries.monotonic = _pool_clock
    Reader.search = late_search  # type: ignore[method-assign]
    QueryPool.__init__ = keep_pool  # type: ignore[method-assign]
    QueryPool.run = run_then_release  # type: ignore[method-assign]
    raise SystemExit(main())
