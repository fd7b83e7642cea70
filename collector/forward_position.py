"""Where the forwarder reads from: the checkpoint's position in the store (set on the
first look, ``forward_from``), whether the store is the one the checkpoint was written
for (``ahead``, starting over), the newest stored seq, and the records retention
deleted before they were forwarded (``skipped``).

A mixin of ``Forwarder``: these methods read and set the forwarder's position and
figures, under its lock, as they did in it; the attributes are declared below and set
by ``Forwarder.__init__``."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector import query as q
from collector.render import terminal_safe
from collector.storage.in_the_way import said_by_the_collector
from collector.storage.records import created_micros
from collector.storage.regular_files import NotRegularFileError

if TYPE_CHECKING:
    from collector.forward_checkpoint import CheckpointFile
    from collector.forward_config import ForwardSettings
    from collector.forward_reads import StoreReads

__all__ = ["StorePosition"]

log = logging.getLogger("collector.forward")  # the forwarder's lines, one logger


class StorePosition:
    data_dir: Path
    settings: ForwardSettings
    checkpoint: CheckpointFile
    _lock: threading.Lock
    state: str
    skipped: int
    _position: int | None
    _mark: str | None
    _checked: bool
    _gone_upto: int | None
    _newest: int
    _first_pending: int
    _oldest_pending_us: int | None
    _warned_ahead: bool
    _reads: StoreReads

    def _search(self, **options: Any) -> q.Page:
        """``q.search`` of every record, on the reader thread (``forward_reads``: a read
        the disk does not answer is said, and does not hold the stop)."""
        def search() -> q.Page:
            try:
                return q.search(self.data_dir, q.Filters(), **options)
            except NotRegularFileError as exc:
                # Worded for a command ("run this again"): the forwarder's failure line
                # and last_error say what an operator does for a running collector. On
                # the reader thread, so that the line of a read said hung that returns
                # with it (``forward_reads``) says so too.
                raise said_by_the_collector(exc, self.data_dir / "segments") or exc from None

        return self._reads.read(search)

    def _start_position(self) -> int:
        if self._position is None:
            newest = self._newest_record() if self.settings.start == "now" else None
            self._position = 0 if newest is None else int(newest["seq"])
            self._mark = None if newest is None else newest["id"]
            self.checkpoint.save(self.settings.endpoint, self._position, self._mark)
            log.info("forwarder: no checkpoint for %s; starting after seq %d (%s)",
                     self.settings.shown_endpoint, self._position, self.settings.start)
        return self._position

    def _check_store(self, position: int) -> bool:
        """Whether this store is the one the checkpoint was written for, as far as can be
        told: False while it holds no record at the checkpoint's seq yet (to be asked
        again). A seq alone took a replaced data directory for the old one: what it
        stored up to that seq was never sent, and the rest followed without a word."""
        page = self._search(limit=1, cursor=q.cursor_after(position - 1),
                            newest_first=False)
        if not page.records:
            self._wait_ahead(position)
            return False
        found = page.records[0]
        # A record after the seq only: retention deleted the one there (``skipped``).
        # No mark: a checkpoint of an older version (given one at the next save).
        if found["seq"] == position and self._mark is not None and found["id"] != self._mark:
            self._start_over(position, found["id"])
        # Only once the start over is saved: a save that failed (disk full) left the
        # position at the other store's seq, and marked checked, the retry went on after
        # it and this store's records up to it were never sent.
        self._checked = True
        return True

    def _wait_ahead(self, position: int) -> None:
        """No record at the checkpoint's seq yet: right after a start the index may be
        catching up (the record is there, and so are the ones before it), or the store
        is another one, whose record at that seq will tell. Either way nothing is sent
        until it does; the records held back meanwhile are lag, not caught up."""
        oldest = self._search(limit=1, newest_first=False).records
        self._refresh_newest([])
        with self._lock:
            self._first_pending = oldest[0]["seq"] if oldest else 0
            self._oldest_pending_us = created_micros(oldest[0]["created"]) if oldest else None
            self.state = "ahead"
        if not self._warned_ahead:
            self._warned_ahead = True
            then = ("if it is another event than the checkpoint's, this data directory is "
                    "not the one the checkpoint was written for and forwarding starts over "
                    "from its beginning" if self._mark is not None else
                    "the checkpoint, written by an older version, names no event, so "
                    "forwarding then goes on after it, whatever store this is")
            log.warning("forwarder: the checkpoint (seq %d) is beyond the newest stored seq "
                        "%d: nothing is forwarded until a record is stored at seq %d; %s. "
                        "To forward this store from forward_from now, stop the collector "
                        "and move %s away", position, self._newest, position, then,
                        self.checkpoint.path)

    def _start_over(self, position: int, found: str) -> None:
        """The record at the checkpoint's seq is another event: the checkpoint counts the
        records of another store. Which records of this one the endpoint has is unknown,
        so all are sent: duplicates (same ``log.record.uid``) rather than a silent gap,
        whatever ``forward_from`` says (``now`` would pass over the records this store
        received before it was noticed, held back meanwhile)."""
        log.error("forwarder: the checkpoint %s names event %s at seq %d, but this data "
                  "directory stores event %s there: it was written for another store (the "
                  "data directory replaced, or restored from an older backup). Forwarding "
                  "to %s starts over from the beginning of this store: records the "
                  "endpoint already has are sent again, with the same log.record.uid",
                  self.checkpoint.path, terminal_safe(self._mark or ""), position,
                  terminal_safe(found), self.settings.shown_endpoint)
        self.checkpoint.save(self.settings.endpoint, 0, None)
        with self._lock:
            self._position, self._mark = 0, None
        self._gone_upto = None  # (another store's numbers)

    def _newest_record(self) -> dict[str, Any] | None:
        try:
            page = self._search(limit=1, newest_first=True)
        except q.QueryError:
            return None  # no index yet: nothing stored
        return page.records[0] if page.records else None

    def _refresh_newest(self, batch: list[dict[str, Any]]) -> None:
        record = self._newest_record()
        newest = 0 if record is None else int(record["seq"])
        if batch:
            newest = max(newest, batch[-1]["seq"])
        with self._lock:
            self._newest = newest

    def _skipped(self, position: int, first: int) -> None:
        """The records between ``position`` and ``first`` are gone (retention): counted
        and said when first seen, once. Counted only once the checkpoint passed them, the
        records retention deleted during an outage showed as none (``skipped`` 0, no line
        in the log) for as long as it lasted, days maybe: the loss was seen only once it
        was over. Counted at each sight, every retry counted the same gap again."""
        since = position if self._gone_upto is None else max(position, self._gone_upto)
        gone = first - since - 1
        if gone <= 0:
            return
        self._gone_upto = first - 1
        with self._lock:
            self.skipped += gone
        log.warning("forwarder: %d records after seq %d are no longer stored (deleted by "
                    "retention before they were forwarded); forwarding goes on at seq %d",
                    gone, since, first)
