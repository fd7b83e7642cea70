"""A query's time limit: past it, the query is stopped and ``QueryTimeoutError`` raised.

    with time_limit(30.0, "query_timeout"):
        reader.search(filters)   # interrupted past 30 s, wherever it is

The limit is set by whoever runs queries (the API's query threads, the ``query``
command's ``--timeout``) and honoured by every ``collector.query.Reader`` call made
under it on that thread, without being passed down: inside SQLite through a progress
handler (``interruptible``), and between records and chunks in Python (``check``). A
context variable, not a Reader's attribute: a thread's Reader may be replaced mid-query
(an index rebuilt at a restart), and the new one must be limited too.

A read the disk never answers (a hung disk) is not cut short: neither SQLite nor Python
gets control back to check. That is the query threads' wait's case
(``collector.api.queries.THREAD_WAIT``), and the read commands' thread they leave past
the limit (``collector.read_deadline``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from time import monotonic
from typing import Final, TypeVar

from .filters import QueryError

#: Seconds a query of the query API may run by default (``query_timeout``).
QUERY_TIMEOUT: Final = 30.0
#: SQLite virtual machine steps between two looks at the clock: ~0.1-1 ms of work, so a
#: query is stopped within about that of its limit, for a Python call per 10,000 steps.
PROGRESS_STEPS: Final = 10_000


class QueryTimeoutError(QueryError):
    """A query ran past its time limit and was stopped: nothing of it is returned."""


class Deadline:
    def __init__(self, seconds: float, setting: str) -> None:
        self.seconds = seconds
        self.setting = setting  # what sets it, for the message: query_timeout, --timeout
        self.at = monotonic() + seconds

    def passed(self) -> bool:
        return monotonic() >= self.at  # a limit of 0 has passed at once

    def error(self) -> QueryTimeoutError:
        return QueryTimeoutError(
            f"the query ran longer than {self.seconds:g} s ({self.setting}) and was "
            f"stopped: narrow it with since/until (a shorter time window), org, workspace, "
            f"principal or exact types rather than broad type globs or client_ip blocks, "
            f"and ask again; {self.setting} sets the limit")


#: Items of a Python loop between two looks at the clock (``checked``).
CHECK_EVERY: Final = 1000

T = TypeVar("T")

_current: ContextVar[Deadline | None] = ContextVar("query_deadline", default=None)


@contextmanager
def time_limit(seconds: float | None, setting: str) -> Iterator[None]:
    """Limit the queries run inside to ``seconds`` from now, all together (None: no
    limit). ``setting`` names what sets it, for the message."""
    if seconds is None:
        yield
        return
    token = _current.set(Deadline(seconds, setting))
    try:
        yield
    finally:
        _current.reset(token)


def check() -> None:
    """Raise ``QueryTimeoutError`` if the current limit has passed: for Python loops
    over a query's rows, chunks or records, which SQLite's handler never sees."""
    deadline = _current.get()
    if deadline is not None and deadline.passed():
        raise deadline.error()


def checked(items: Iterable[T]) -> Iterator[T]:
    """``items``, with ``check`` before the first and every ``CHECK_EVERY`` after it:
    for loops over what a store may hold a million of (its event types), in code that
    does not know of the limit (``fnmatch.filter``, ``difflib``)."""
    check()
    for n, item in enumerate(items, 1):
        yield item
        if n % CHECK_EVERY == 0:
            check()


@contextmanager
def interruptible(con: sqlite3.Connection) -> Iterator[None]:
    """Run ``con``'s statements under the current limit, if any: SQLite stops one past
    it ("interrupted"), raised as ``QueryTimeoutError``. Either way, ``con`` is left
    with no handler and no transaction, ready for the next query: an interrupted read's
    snapshot left open held the WAL's checkpoints back and failed the next BEGIN."""
    deadline = _current.get()
    if deadline is None:
        yield
        return
    con.set_progress_handler(deadline.passed, PROGRESS_STEPS)
    try:
        yield
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode == sqlite3.SQLITE_INTERRUPT and deadline.passed():
            raise deadline.error() from None
        raise
    finally:
        con.set_progress_handler(None, PROGRESS_STEPS)
        if con.in_transaction:  # its COMMIT was interrupted too, or never ran
            con.execute("ROLLBACK")
