"""Querying stored audit records: filters, keyset pages, streaming, reindex.

    page = search(data_dir, Filters(principal="u-1", org="o-1", since="1h"))
    while page.next_cursor:
        page = search(data_dir, filters, cursor=page.next_cursor)

Pages are ordered by ``seq`` (arrival order; newest first by default) and the cursor is
a keyset on it, so paging stays stable while new events arrive: a page never repeats or
skips a record that existed when paging began. Relative times ("24h") are resolved on
the first page and carried in the cursor.

Each index chunk is queried in turn through its indexes (see ``collector.index``) and
the records are read back from the segments by offset: a page never scans a segment.
What each chunk is asked, and through which index, is ``collector.storage.conditions``.

Here: the module-level functions (through a ``Reader`` kept per thread,
``collector.query_thread_readers``) and ``reindex``. The rest, each in a module of its
own and re-exported here: ``Filters`` (``collector.query_filters``), ``Reader`` and
``Page`` (``collector.query_reader``), the page walk through the chunks, a part
``Reader`` inherits (``collector.query_walk``), and the cursors
(``collector.query_cursors``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.index import Index
from collector.query_cursors import cursor_after, cursor_before
from collector.query_filters import Filters
from collector.query_reader import MAX_LIMIT, IndexUnavailableError, Page, Reader
from collector.query_thread_readers import KEEP_READERS, _reader, close_readers
from collector.storage.data_dir_lock import lock_data_dir
from collector.storage.filters import QueryError, check_text
from collector.storage.in_the_way import (
    QUARANTINE,
    SEGMENTS,
    SEGMENTS_THEN,
    make_store_dir,
    refuse_other_than_a_dir,
    segment_files_named,
)
from collector.storage.recovery import RepairReport, open_and_recover

if TYPE_CHECKING:
    from collector.store import Store

# The constants and cursor_before too: the read commands use them as ``q.MAX_LIMIT``, ...
__all__ = ["KEEP_READERS", "MAX_LIMIT", "Filters", "IndexUnavailableError", "Page", "QueryError",
           "Reader", "close_readers", "cursor_after", "cursor_before", "find", "follow_cursor",
           "iter_records", "reindex", "search"]


def search(index_path_or_store: Store | Path | str, filters: Filters, *, limit: int = 100,
           cursor: str | None = None, newest_first: bool = True,
           bounds: bool = False) -> Page:
    """One page of the records matching ``filters`` (a data directory, its
    index.sqlite, or an open Store); ``bounds``: with ``Page.stored``."""
    return _reader(index_path_or_store).search(filters, limit=limit, cursor=cursor,
                                               newest_first=newest_first, bounds=bounds)


def iter_records(index_path_or_store: Store | Path | str, filters: Filters | None = None, *,
                 newest_first: bool = False, page_size: int = 1000,
                 cursor: str | None = None) -> Iterator[dict[str, Any]]:
    """Every matching record, a page at a time (constant memory: for exports)."""
    filters = filters or Filters()
    while True:
        page = search(index_path_or_store, filters, limit=page_size, cursor=cursor,
                      newest_first=newest_first)
        yield from page.records
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def find(index_path_or_store: Store | Path | str, event_id: str) -> dict[str, Any] | None:
    """The stored record of ``event_id``, or None."""
    return _reader(index_path_or_store).find(check_text(event_id, "event id"))


def stored_types(index_path_or_store: Store | Path | str) -> frozenset[str]:
    """Every event type the store holds."""
    return _reader(index_path_or_store).stored_types()


def follow_cursor(index_path_or_store: Store | Path | str, filters: Filters) -> str:
    """Where ``tail -f`` starts: pass it to ``search(..., newest_first=False)``."""
    return _reader(index_path_or_store).follow_cursor(filters)


def newest_seq(index_path_or_store: Store | Path | str) -> int:
    """The seq of the newest record stored now (0: none)."""
    return _reader(index_path_or_store).newest_seq()


def reindex(data_dir: Path | str, progress: Callable[[int, int], None] | None = None) -> RepairReport:
    """Rebuild index.sqlite from the segments (plain and compressed). ``progress`` gets
    (bytes done, bytes total). Refuses while a collector holds the data directory."""
    data_dir = Path(data_dir)
    segments = data_dir / "segments"
    refuse_other_than_a_dir(segments, SEGMENTS, SEGMENTS_THEN)  # not "not a data directory"
    if not segments.is_dir():
        raise QueryError(f"{data_dir} has no segments/ directory: not a collector data "
                         f"directory")
    make_store_dir(data_dir / "quarantine", 0o750, QUARANTINE)
    lock = lock_data_dir(data_dir)
    try:
        with segment_files_named(segments):  # a FIFO there: what to do, not just what
            index, report = open_and_recover(
                data_dir / "index.sqlite", segments, data_dir / "quarantine",
                make_index=Index, rebuild="reindex requested", progress=progress)
        try:
            index.close_chunk()
            for chunk in index.closed_chunks():
                index.build_indexes(chunk)
            index.checkpoint()
        finally:
            index.close()
    finally:
        lock.close()
    return report
