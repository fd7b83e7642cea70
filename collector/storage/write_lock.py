"""The index's write lock: one SQLite write transaction at a time, the store's first.

SQLite takes one writer at a time. The store's commit thread (a write per group
commit, which acknowledgements wait for) and the ``ChunkIndexer`` (a postings build of
~45 ms per filter column of a closed chunk, seven in a row) share this lock
instead of SQLite's busy handler, which sleeps and polls.

A plain ``threading.Lock`` is not fair: the indexer, going from one column's build
straight to the next, took it again before the waiting commit thread woke, and a group
commit waited for all seven (up to ~230 ms under load, a fifth of the commit thread's
time). Here a background holder (``background()``) does not take the lock while the
store waits for it; the store then waits for one column's build at most.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["WriteLock"]


class WriteLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._store_waiting = 0

    def acquire(self) -> None:
        """Take the lock for the store: before any background holder that waits."""
        with self._cond:
            self._store_waiting += 1
            try:
                while self._held:
                    self._cond.wait()
            finally:
                self._store_waiting -= 1
            self._held = True

    def try_acquire(self) -> bool:
        """Take the lock for the store if it is free now; False (not taken) if a
        background holder has it. For a check that must not wait: the indexer can hold
        it for SQLite's whole busy timeout while another process holds the index's lock."""
        with self._cond:
            if self._held:
                return False
            self._held = True
            return True

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("WriteLock.release() without acquire()")
            self._held = False
            self._cond.notify_all()

    @contextmanager
    def background(self) -> Iterator[None]:
        """Hold the lock for background work (index builds, checkpoints): taken only
        when it is free and the store is not waiting for it."""
        with self._cond:
            while self._held or self._store_waiting:
                self._cond.wait()
            self._held = True
        try:
            yield
        finally:
            self.release()

    @contextmanager
    def background_transaction(self, con: sqlite3.Connection) -> Iterator[None]:
        """A write transaction on ``con`` under ``background()``: committed when the
        block ends, rolled back when it raises. Background work is cut into such
        transactions, each short, so the store waits for one of them at most."""
        with self.background():
            con.execute("BEGIN IMMEDIATE")
            try:
                yield
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
