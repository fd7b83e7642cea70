"""Streaming exports of a selection, CSV or JSON-lines: a page of the index at a time
(the keyset pages of ``collector.query``, walked as ``iter_records`` walks them, on the
API's own query connections), rendered on a worker thread while the next page is read.
At most two pages are held, whatever the size of the selection; a slow client slows the
reading down instead of filling a buffer.

An error after the first byte cannot change the status code any more: the stream is
then aborted, so the client sees a failed download, never a silently short file, and
one line of the log says what was sent and why it stopped (``ExportResponse``,
``export_cuts``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from collector import formats, render
from collector.query import Page, Reader

from .aborts import Ending, abort, disconnected
from .export_cuts import count_cut, log_cut, log_gone
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


@dataclass
class Sent:
    """What an export has handed to the server so far."""
    rows: int = 0
    bytes: int = 0


async def stream(pool: QueryPool, selection: Selection, fmt: str, page: Page,
                 sent: Sent) -> AsyncIterator[bytes]:
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
            sent.rows, sent.bytes = sent.rows + len(records), sent.bytes + len(body)
        if following is None:
            return
        page, header = following, False


class ExportResponse(StreamingResponse):
    """An export's streamed answer (``stream``, counting into ``sent``). Ended by an
    error after it started: one line in the log (``export_cuts``: a warning or error
    for an expected reason, a traceback for a fault), and its connection aborted
    (``collector.api.aborts``); raised to the server, every such error was logged as an
    internal error with two tracebacks. A failed download is counted in ``cuts``
    (``export_cuts.count_cut``); one whose client left first is not: nobody's failed."""

    def __init__(self, content: AsyncIterator[bytes], sent: Sent, fmt: str,
                 cuts: Counter[str], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.sent, self.fmt, self.cuts = sent, fmt, cuts
        self._request: tuple[Scope, Receive] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._request = scope, receive
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        except Exception as exc:  # each is said, then ends the connection
            assert self._request is not None
            scope, receive = self._request
            # Said between the abort and the wait for the server to see it, without an
            # await: the server's disconnect cancels this task (Starlette's disconnect
            # listener) and would cut a line said after the wait.
            ending = abort(scope)
            what = scope, self.fmt, self.sent.rows, self.sent.bytes, exc
            if ending is Ending.GONE:
                log_gone(*what)
                return
            log_cut(*what)
            count_cut(self.cuts, exc)
            if ending is Ending.IN_PROCESS:
                raise
            await disconnected(receive)
