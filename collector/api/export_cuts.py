"""Why an export stopped after its first bytes, in one line of the log: what was
exported, how far it got, why it stopped and what to do. Raised to the server, each cut
was logged as an internal error with two tracebacks (Starlette's, uvicorn's), the
expected ones too.

Expected reasons are said at the level their 503 is logged at before the first byte
(``collector.api.app``), with no traceback: the query time limit, every query thread
busy (an overloaded collector, or a hung disk not yet past the limit), a query thread
held in a read past the limit (a hung disk: ``QueriesHung``, the next page's own
thread among them, or every thread held and none left for it), the index unavailable (a
rebuild under way, a damaged or missing file), a segment that cannot be read (damaged:
``CorruptSegmentError``, which names it and says what to do, or something else in its
place: ``SegmentFileInTheWayError``). Anything else is a fault
(a bug, an index damaged on disk): one traceback.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Final

from starlette.types import Scope

from collector.query import IndexUnavailableError
from collector.storage.errors import CorruptSegmentError, IndexOutOfDateError
from collector.storage.in_the_way import SegmentFileInTheWayError
from collector.storage.time_limit import QueryTimeoutError

from .queries import QueriesBusy, QueriesHung

log = logging.getLogger("collector.api")

#: What every cut line ends with: what the client saw.
FAILED_DOWNLOAD = ("Its connection is closed before the end of the body: the download "
                   "fails, it does not end short")


#: Why an export is cut after its first bytes (``Cut.reason``), each counted as
#: ``exports_cut_<reason>`` (``/metrics``): "fault" is anything unexpected.
CUT_REASONS: Final = ("query_timeout", "hung", "busy", "index", "segment", "fault")


@dataclass(frozen=True)
class Cut:
    level: int
    #: Why it stopped and what to do.
    why: str
    #: One of ``CUT_REASONS``.
    reason: str


def expected_cut(exc: Exception) -> Cut | None:
    """The line an expected reason gets; None for a fault."""
    if isinstance(exc, QueryTimeoutError):
        return Cut(logging.WARNING, str(exc), "query_timeout")  # says to narrow the selection
    if isinstance(exc, QueriesHung):  # before its base, QueriesBusy
        waited = "its read" if exc.taken else "a query thread"
        return Cut(logging.ERROR, f"its next page waited for {waited}: {exc.reason}; "
                                  f"download it again once the disk answers", "hung")
    if isinstance(exc, QueriesBusy):
        # The 503's message says "nothing was read or recorded": an export was.
        return Cut(logging.WARNING, f"its next page waited for a query thread: "
                                    f"{exc.reason}; download it again later, and if this "
                                    f"recurs while few readers query, check the data disk",
                   "busy")
    if isinstance(exc, (IndexUnavailableError, IndexOutOfDateError)):
        # Names the file and what to do (usually: wait for the rebuild, or reindex).
        return Cut(logging.ERROR, f"the index cannot answer: {exc}; download it again "
                                  f"once it does", "index")
    if isinstance(exc, CorruptSegmentError):
        # Names the segment and what to do (reindex, move it out), as the 503 says it.
        return Cut(logging.ERROR, f"a segment of the store cannot be read: {exc}; "
                                  f"`audit-collector verify` reports what else is damaged; "
                                  f"download it again once the segment is mended", "segment")
    if isinstance(exc, SegmentFileInTheWayError):
        # Something else in a segment file's place: before the first byte a 503 says it
        # (``app._not_a_regular_file``); after it, the same words, not a fault's traceback.
        return Cut(logging.ERROR, f"a segment file of the store cannot be read: {exc}; "
                                  f"download it again once it is back", "segment")
    return None


def count_cut(counters: Counter[str], exc: Exception) -> None:
    """Count an export ``exc`` ended after its first bytes, its download failed:
    ``exports_cut`` and by reason (``CUT_REASONS``)."""
    cut = expected_cut(exc)
    counters["exports_cut"] += 1
    counters[f"exports_cut_{cut.reason if cut is not None else 'fault'}"] += 1


def log_cut(scope: Scope, fmt: str, rows: int, sent: int, exc: Exception) -> None:
    """One line for ``exc``, which ended the export of ``scope`` after ``rows`` records
    (``sent`` bytes) were handed to the server."""
    # %r: the path is the client's text (see collector.api.app).
    what = (scope["method"], scope["path"], fmt, rows, sent)
    cut = expected_cut(exc)
    if cut is None:
        log.error("query API: %s %r (%s) failed after %d row(s), %d bytes sent. %s",
                  *what, FAILED_DOWNLOAD, exc_info=exc)
    else:
        log.log(cut.level, "query API: %s %r (%s) stopped after %d row(s), %d bytes sent: "
                "%s. %s", *what, cut.why, FAILED_DOWNLOAD)


def log_gone(scope: Scope, fmt: str, rows: int, sent: int, exc: Exception) -> None:
    """The client left before ``exc`` ended the export: nobody's download to fail, and a
    fault still said (with its traceback)."""
    if expected_cut(exc) is None:
        log.error("query API: %s %r (%s) failed after %d row(s), %d bytes sent, its "
                  "client gone already", scope["method"], scope["path"], fmt, rows, sent,
                  exc_info=exc)
    else:
        log.debug("query API: %s %r (%s) stopped after %d row(s), %d bytes sent, its "
                  "client gone already: %s", scope["method"], scope["path"], fmt, rows,
                  sent, exc)
