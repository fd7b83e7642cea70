"""Why the query API answers a request 503, apart from the query pool's refusals: each
such answer counted once, as ``queries_refused_<reason>`` and in ``queries_refused``
(``/metrics``, docs/api.md "Refusals in /metrics").

The pool's own (``collector.api.queries.REFUSALS``: every thread busy, a hung disk,
``query_timeout``) are counted by ``QueryPool.run``, where they are raised, whether
answered 503 or cutting an export: their answers here are not counted again. The rest
are counted where they are answered (``collector.api.app``'s handlers, ``GET
/metrics``): one raised on an export's later page is no answer, and is counted among the
exports cut only (``collector.api.export_cuts``), as before.
"""

from __future__ import annotations

from typing import Final

from collector.disk_calls import DiskLate
from collector.query import IndexUnavailableError
from collector.readers import ReaderError
from collector.storage.errors import CorruptSegmentError, IndexOutOfDateError, StorageError
from collector.storage.regular_files import NotRegularFileError
from collector.storage.time_limit import QueryTimeoutError

from .auth import ReadersLate
from .queries import QueriesBusy
from .reads import ReadNotRecordedError

#: Why a request is answered 503 besides the pool's refusals, each counted as
#: ``queries_refused_<reason>``.
REASONS: Final = ("index", "segment", "not_recorded", "storage", "disk", "readers",
                  "readers_late")

#: Most specific first: ``IndexOutOfDateError`` and ``CorruptSegmentError`` are
#: ``StorageError``s, ``QueriesBusy`` is a ``DiskLate``.
_BY_CLASS: Final[tuple[tuple[type[Exception] | tuple[type[Exception], ...], str | None],
                       ...]] = (
    ((QueriesBusy, QueryTimeoutError), None),  # QueryPool.run counted it already
    ((IndexUnavailableError, IndexOutOfDateError), "index"),
    # Something else in a segment file's place (``app._not_a_regular_file``).
    ((CorruptSegmentError, NotRegularFileError), "segment"),
    (ReadNotRecordedError, "not_recorded"),
    (StorageError, "storage"),
    (DiskLate, "disk"),
    (ReaderError, "readers"),
    (ReadersLate, "readers_late"),
)


def reason_of(kind: type[BaseException]) -> str | None:
    """The reason a 503 answered for an exception of ``kind`` is counted by
    (``REASONS``); None for the pool's refusals, counted where raised. ``LookupError``
    for a kind no 503 is answered for (a test holds every 503 handler's kinds to one)."""
    for classes, reason in _BY_CLASS:
        if issubclass(kind, classes):
            return reason
    raise LookupError(f"no 503 reason for {kind.__name__}: add it to "
                      f"collector.api.unavailable.REASONS")
