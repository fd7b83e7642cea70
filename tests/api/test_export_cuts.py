"""An export ended by an expected reason once its client has gone already: nobody's
download to fail, so nothing to say above debug. The server has no connection of it
left to abort; the response raised then, and the server logged the end as an internal
error with two tracebacks. (Cuts with the client still there: tests/api/
test_serve_api.py, on a real server.)"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.types import Message

from collector.api.aborts import ABORT
from collector.api.exports import ExportResponse, Sent
from collector.api.queries import QueriesBusy, QueriesHung
from collector.metrics import METRICS
from collector.storage.in_the_way import said_by_the_collector
from collector.storage.regular_files import NotRegularFileError
from collector.storage.time_limit import Deadline

PATH = "/api/v1/audit-logs/export.csv"


async def cut_body(error: Exception) -> AsyncIterator[bytes]:
    """An export's body, ``error`` raised after its first bytes."""
    yield b"Type,Target\n"
    raise error


def cut_after_the_client_left(error: Exception, caplog: pytest.LogCaptureFixture
                              ) -> logging.LogRecord:
    """The one log record of an export ``error`` ends once its client has gone."""
    async def receive() -> Message:
        await asyncio.Event().wait()  # the disconnect is not read yet (the race)
        raise AssertionError("unreachable")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": PATH,
             "asgi": {"version": "3.0", "spec_version": "2.3"},  # uvicorn's
             # The server's lookup of the connection finds none: it was lost.
             "extensions": {ABORT: lambda: False}}
    cuts: Counter[str] = Counter()
    response = ExportResponse(cut_body(error), Sent(rows=1, bytes=12), "csv", cuts,
                              media_type="text/csv")
    with caplog.at_level(logging.DEBUG, logger="collector.api"):
        asyncio.run(response(scope, receive, send))
    assert cuts == {}  # nobody's download failed: no cut to count
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[-1]["more_body"]  # never ended as if whole
    [record] = caplog.records
    return record


def test_an_export_cut_after_its_client_left_ends_with_a_debug_line_only(
        caplog: pytest.LogCaptureFixture) -> None:
    record = cut_after_the_client_left(Deadline(30.0, "query_timeout").error(), caplog)
    assert record.levelno == logging.DEBUG, record.getMessage()
    assert record.getMessage().startswith(
        f"query API: GET {PATH!r} (csv) stopped after 1 row(s), 12 bytes sent, its client "
        f"gone already: the query ran longer than 30 s (query_timeout)")


def test_a_fault_after_its_client_left_is_one_error_with_its_traceback_and_no_download(
        caplog: pytest.LogCaptureFixture) -> None:
    record = cut_after_the_client_left(RuntimeError("a bug"), caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None
    message = record.getMessage()
    assert message.startswith(f"query API: GET {PATH!r} (csv) failed after 1 row(s), 12 "
                              f"bytes sent, its client gone already")
    assert "the download fails" not in message  # nobody's download to fail


@pytest.mark.parametrize(("error", "reason"), [
    (Deadline(30.0, "query_timeout").error(), "query_timeout"),
    (QueriesBusy(4), "busy"),
    (QueriesHung(4, 1, 40.0, 30.0, taken=True), "hung"),
    (RuntimeError("a bug"), "fault"),
])
def test_a_failed_download_is_counted_once_by_the_reason_it_was_cut(
        error: Exception, reason: str) -> None:
    """Cuts were log lines only: an operator could not alert on downloads failing (for a
    hung disk, most often). Served in process, the response raises to whoever serves it
    (``Ending.IN_PROCESS``), its download failed all the same."""
    assert cut_with_the_client_there(error) == {"exports_cut": 1, f"exports_cut_{reason}": 1}
    assert f"exports_cut_{reason}" in {m.key for m in METRICS}


def cut_with_the_client_there(error: Exception) -> Counter[str]:
    """The cuts counted for an export ``error`` ends after its first bytes, its client
    still there (served in process: the response raises it)."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client stays
        raise AssertionError("unreachable")

    scope = {"type": "http", "method": "GET", "path": PATH,
             "asgi": {"version": "3.0", "spec_version": "2.3"}}
    cuts: Counter[str] = Counter()
    response = ExportResponse(cut_body(error), Sent(rows=1, bytes=12), "csv", cuts,
                              media_type="text/csv")
    with pytest.raises(type(error)):
        asyncio.run(response(scope, receive, send))
    return cuts


def test_a_segment_file_in_the_way_cuts_a_download_as_its_503_says_it_not_as_a_fault(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before the first byte a FIFO in a segment file's place is a 503 naming it
    (counted as a segment's); met by a later page, it was a fault: a traceback, counted
    in ``exports_cut_fault``. It is the segment's cut, said in the collector's words."""
    segments = tmp_path / "segments"
    segments.mkdir()
    fifo = segments / "segment-00000001.jsonl"
    os.mkfifo(fifo)
    error = said_by_the_collector(  # as the query pool words it (``QueryPool``)
        NotRegularFileError(errno.EINVAL, "a FIFO, not a regular file", str(fifo)), segments)
    assert error is not None
    with caplog.at_level(logging.DEBUG, logger="collector.api"):
        assert cut_with_the_client_there(error) == {"exports_cut": 1,
                                                    "exports_cut_segment": 1}
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is None
    assert record.getMessage().startswith(
        f"query API: GET {PATH!r} (csv) stopped after 1 row(s), 12 bytes sent: a segment "
        f"file of the store cannot be read: {fifo} is a FIFO, where the collector keeps a "
        f"segment file"), record.getMessage()
    assert "the running collector reads it at its next request" in record.getMessage()
