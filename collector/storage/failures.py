"""What fails now in the store, for its stats' ``last_error``.

A single field kept the first failure for good (a compression that met a full disk said
so long after its retry had compressed the segment) and hid a later one behind it; one
cleared by any later success that was not a retry of the same work (the next
housekeeping pass after a commit that raised) said nothing failed while every batch
still did. So each failure is kept by what failed, and goes only once that very work
succeeds.

A failed commit is also classed by what ends it (``write_failure``), for the
collector's readiness (``Store.refusal``, ``GET /healthz``).
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from pathlib import Path
from typing import Final, Literal

from .disk_space import error_chain, out_of_space

#: Why the store takes no events now (``Store.refusal``). Fixed words: a probe that
#: needs no token reads them, so they say nothing the store holds.
NOT_OPEN: Final = "not_open"
DISK_FULL: Final = "disk_full"
WRITE_FAILING: Final = "write_failing"
#: Work has waited for the commit thread past ``StorageSettings.write_stall_timeout``:
#: a hung fsync (a dying disk, a frozen network file system), not a failure.
WRITE_STALLED: Final = "write_stalled"
WriteFailure = Literal["disk_full", "write_failing"]


def write_failure(exc: BaseException, directory: Path) -> WriteFailure:
    """``DISK_FULL`` when ``exc`` is ``directory``'s disk being full, which freed space
    ends (and ``free_bytes`` shows); else ``WRITE_FAILING``: an I/O error, a read-only
    or unwritable directory, or a user's quota (``EDQUOT``: ``free_bytes`` does not see
    it), which only a write that goes through shows ended."""
    # Looked for through the whole chain, as out_of_space looks: a quota error the
    # store wrapped in its own was classed DISK_FULL, judged by free space, and the
    # probe said ready while every batch was refused.
    quota = any(getattr(e, "errno", None) == errno.EDQUOT for e in error_chain(exc))
    if out_of_space(exc, directory) and not quota:
        return DISK_FULL
    return WRITE_FAILING


#: SQLite's primary result codes that the environment causes (a file's I/O error, a
#: read-only, full or unopenable file, a lock another connection holds), which a write
#: that goes through shows ended. Python raises most of SQLite's errors as
#: ``OperationalError``, a bug's SQL too (``SQLITE_ERROR``: "no such table", "too many
#: SQL variables" in a large batch only), so the class alone does not tell.
_ENVIRONMENT_CODES: Final = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_READONLY",
                             "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_CANTOPEN",
                             "SQLITE_PROTOCOL", "SQLITE_PERM")


def checkable(exc: BaseException) -> bool:
    """Whether the idle store's write checks (``Store._check_failed_write``: a file in
    ``segments/``, a write in the index) can show that the failure ``exc`` ended: a
    file's error (``OSError``) or SQLite's that the environment causes
    (``_ENVIRONMENT_CODES``). Not a bug's (SQLite's ``SQLITE_ERROR`` included), nor a
    corrupt index's, which a check that goes through does not show mended: only a batch
    written ends those. Judged by the class alone, a bug's SQL error on large batches
    only read ready half a second after each batch it refused (the check's small write
    went through)."""
    return any(isinstance(e, OSError) or _environment_sqlite_error(e)
               for e in error_chain(exc))


def _environment_sqlite_error(exc: BaseException) -> bool:
    name = getattr(exc, "sqlite_errorname", None) if isinstance(exc, sqlite3.Error) else None
    if not isinstance(name, str):
        return False  # not SQLite's own (raised by code): a bug's
    # Extended codes name their primary one first: SQLITE_IOERR_WRITE, SQLITE_BUSY_SNAPSHOT.
    return any(name == code or name.startswith(f"{code}_") for code in _ENVIRONMENT_CODES)


class Failures:
    """Failures by what failed (``"rotation"``, ``"compressing 12"``, ``"commit"``...),
    the newest last. Thread-safe: a background thread may set one while the stats read
    them."""

    def __init__(self) -> None:
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def failing(self, what: str, error: str) -> None:
        """``what`` failed with ``error`` (the newest failure from now on)."""
        with self._lock:
            self._errors.pop(what, None)  # the newest goes last
            self._errors[what] = error

    def recovered(self, what: str) -> None:
        """``what`` succeeded (or is no longer to be done): its failure is over."""
        with self._lock:
            self._errors.pop(what, None)

    @property
    def newest(self) -> str | None:
        """The newest failure that lasts (None once each has recovered)."""
        with self._lock:
            return next(reversed(self._errors.values()), None)
