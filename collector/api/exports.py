"""Streaming exports of a selection, CSV or JSON-lines: a page of the index at a time
(the keyset pages of ``collector.query``, walked as ``iter_records`` walks them, on the
API's own query connections), rendered on a worker thread while the next page is read.
At most two pages are held, whatever the size of the selection; a slow client slows the
reading down instead of filling a buffer.

An error after the first byte cannot change the status code any more: the stream is
then aborted, so the client sees a failed download, never a silently short file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from collector import formats, render
from collector.query import Page, Reader

from .params import Selection
from .queries import QueryPool

PAGE: Final = 1000
MEDIA_TYPES: Final = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson",
                      "ocsf": "application/x-ndjson", "ecs": "application/x-ndjson"}
#: File name extension of each export format.
EXTENSIONS: Final = {"csv": "csv", "jsonl": "jsonl", "ocsf": "ocsf.jsonl", "ecs": "ecs.jsonl"}


def first_page(reader: Reader, selection: Selection) -> Page:
    """Read before the response starts, so a bad filter is still a 400."""
    return reader.search(selection.filters, limit=PAGE, newest_first=selection.newest_first)


def render_records(records: list[dict[str, object]], fmt: str, header: bool) -> bytes:
    if fmt == "jsonl":
        return b"".join(render.jsonl(records))
    if fmt in formats.FORMATTERS:  # ocsf, ecs (collector/formats.py)
        return b"".join(formats.json_lines(records, fmt))
    rows = render.csv_rows(records)
    head = next(rows)
    return ((head if header else "") + "".join(rows)).encode("utf-8")


async def stream(pool: QueryPool, selection: Selection, fmt: str,
                 page: Page) -> AsyncIterator[bytes]:
    header = True
    while True:
        records, cursor = page.records, page.next_cursor

        def work(reader: Reader, records: list[dict[str, object]] = records,
                 cursor: str | None = cursor, header: bool = header) -> tuple[bytes, Page | None]:
            body = render_records(records, fmt, header)
            following = reader.search(selection.filters, limit=PAGE, cursor=cursor,
                                      newest_first=selection.newest_first) if cursor else None
            return body, following

        body, following = await pool.run(work)
        if body:
            yield body
        if following is None:
            return
        page, header = following, False
