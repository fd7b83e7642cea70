"""The index's write transactions (a part of ``Index``, which inherits it): each under
the in-process write lock (``collector.storage.write_lock``) and SQLite's, rolled back
with the writer's view, and the idle store's check that the index takes writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from collector.index_connections import BUSY_TIMEOUT_MS
from collector.storage.write_lock import WriteLock

#: The meta row ``Index.check_writes`` writes and deletes in one transaction: never
#: seen outside it.
_WRITE_CHECK_KEY: Final = "write_check"


class _Transactions:
    """``Index``'s write transactions (see this module's doc)."""

    #: Set in ``Index.__init__``.
    con: sqlite3.Connection
    write_lock: WriteLock
    _holding: bool
    _closed_before: int
    newly_closed: list[int]
    #: Reloads the writer's view from the index (``Index``).
    _load: Callable[[], None]

    def begin(self) -> None:
        self.write_lock.acquire()
        self._begin_holding()

    def _begin_holding(self) -> None:
        """``BEGIN IMMEDIATE`` with the in-process write lock taken (released if it fails)."""
        self._holding = True
        self._closed_before = len(self.newly_closed)
        try:
            self.con.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._release()
            raise

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction around the block: committed when it ends, rolled back
        (the writer's view reloaded with it) when it raises."""
        self.begin()
        with self._ending():
            yield

    @contextmanager
    def _ending(self) -> Iterator[None]:
        """Commit the transaction begun when the block ends; roll it back if it raises."""
        try:
            yield
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def commit(self) -> None:
        try:
            self.con.execute("COMMIT")
        finally:
            if not self.con.in_transaction:
                self._release()

    def rollback(self) -> None:
        try:
            if self.con.in_transaction:
                self.con.execute("ROLLBACK")
        finally:
            self._release()
        del self.newly_closed[self._closed_before:]  # those closes were rolled back too
        self._load()  # the open chunk's counters went back with the rows

    def check_writes(self) -> bool:
        """Write a meta row and delete it again, in a transaction of its own: raises
        SQLite's error while the index refuses writes (an I/O error, a read-only or full
        file, its lock held by another process). No row stays, yet the commit writes
        the changed page to the WAL, as a batch's commit does. For the idle store
        (``Store._check_failed_write``), which must not say ready over an index that
        refuses every batch, nor unready for good once it takes them again. False (not
        checked) while the ``ChunkIndexer`` holds the in-process write lock.

        It waits for no lock: it runs on the commit thread, which a batch arriving then
        waits for. SQLite's busy handler is off meanwhile (another process holding the
        index's lock fails a batch's commit too, after the busy timeout), and the
        in-process write lock is only tried: the indexer can hold it for that whole busy
        timeout (10 s) while another process holds the index's lock, and a check that
        waited for it held every batch that long."""
        con = self.con
        con.execute("PRAGMA busy_timeout=0")
        try:
            if not self.write_lock.try_acquire():
                return False
            self._begin_holding()
            with self._ending():
                con.execute("INSERT OR REPLACE INTO meta VALUES(?, '')", (_WRITE_CHECK_KEY,))
                con.execute("DELETE FROM meta WHERE key=?", (_WRITE_CHECK_KEY,))
        finally:
            con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return True

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self.write_lock.release()
