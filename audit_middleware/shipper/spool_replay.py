"""Replaying the spool, oldest batch first: the batch not yet acknowledged (``peek``),
past any damaged region (skipped, its loss counted and said); the move past it once
acknowledged (``commit``); a file done with (removed, or held); and one the disk refuses
to read (held aside, tried again at the next scan). See ``spool``'s module doc."""

from __future__ import annotations

from .._counter import worth_saying
from .spool_adoption import _Adoption
from .spool_files import _File, log
from .spool_format import (
    RECORD,
    _events_between,
    _next_record,
    _record_at,
    _size_of,
    _torn_record_at,
)
from .spool_held import _let_go, _retire


class _Replay(_Adoption):
    """``Spool``'s replay of its files (see this module's doc)."""

    #: Set, and said, in ``Spool.__init__``.
    corrupt_bytes: int
    lost_events: int

    @property
    def empty(self) -> bool:
        return not self._files

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def unread_files(self) -> int:
        """Files held aside because the disk refused to read them (``_read_failed``)."""
        return len(self._unread)

    @property
    def replay_pending(self) -> bool:
        """Whether anything spooled is still to be replayed: files held, orphans a scan
        left for the next one, or files the disk could not read (``_read_failed``)."""
        return bool(self._files or self.orphans_left or self._unread)

    def peek(self) -> bytes | None:
        """The oldest batch body not yet committed, or None when the spool is empty."""
        while self._files:
            head = self._files[0]
            try:
                body = self._head_record(head)
            except OSError as exc:
                self._read_failed(head, exc)
                continue
            if body is not None:
                return body
            self._remove_head()
        return None

    def _head_record(self, head: _File) -> bytes | None:
        """The valid record at ``head``'s read position, past any damaged region (counted);
        None when the file holds no more (marked ``unreadable`` if it held none)."""
        end = head.size
        while True:
            body = _record_at(head.fd, head.read_pos, end)
            if body is not None:
                head.peeked = len(body)
                return body
            if head.read_pos >= end:
                return None
            # From where its reading began, not only from its start: a newer release's
            # file half replayed (its progress file beside it, of the same form) was
            # taken for this release's torn tail and removed.
            untouched = head.read_pos == head.began_at
            # A file of none but its first batch torn (its process killed in that write,
            # a power loss leaving zeros) is this release's own damage: counted and
            # removed, as before, not set aside by the hundred for a crash-looping app.
            # So is one torn just past its progress. (Read before the region is skipped:
            # a read refused after it would leave the file to be removed when tried again.)
            foreign = untouched and not _torn_record_at(head.fd, head.began_at, end)
            self._skip_corrupt(head)
            if head.read_pos < end:
                continue  # a valid record after the corrupt region
            head.unreadable = foreign
            return None

    def _read_failed(self, head: _File, exc: OSError) -> None:
        """The disk refused a read of ``head`` (EIO: a bad block; a network file system
        gone stale). Raised, it stopped the replay for good: the sink's worker logged a
        traceback at every try (20 a second), and every later batch waited behind the
        file, spooled, until the cap dropped them. Nothing of it is known lost, so it is
        neither skipped nor counted: held aside, still locked (no other process tries it
        meanwhile), and tried again at the next scan (``adopt_orphans``); the files after
        it are replayed meanwhile. Said at the 1st, 2nd, 4th, ... failure of each file:
        counted for the process, a file refused after another had been for a while was
        not named until the count reached its next power of two, hours later."""
        self._files.remove(head)
        head.peeked = None
        if head is self._active:
            self._active = None  # no more batches into a file that cannot be read
        self._unread.append(head)
        self._release_adoption()  # others may adopt meanwhile: its own lock keeps it ours
        head.read_failures += 1
        n = head.read_failures
        if worth_saying(n):
            log.error("audit spool %s: cannot read %s (%s): its batches are not replayed "
                      "yet; it is kept and tried again at the next scan, and the spool "
                      "files after it are replayed meanwhile. Check the disk (to give its "
                      "batches up, stop the app and move the file away)%s",
                      self.directory, head.path.name, exc,
                      f" ({n} failures of it so far; said again at {2 * n})" if n > 1 else "")

    def _skip_corrupt(self, head: _File) -> None:
        """Move ``head`` past the region at its read position that is no valid record,
        to the next valid record or the end of the file; count and log what was lost."""
        start, end = head.read_pos, head.size
        found, budget = _next_record(head.fd, start, end, head.scan_budget)
        skip = found - start
        events = _events_between(head.fd, start, found)
        # Spent with the skip only: a read refused before it (the file held aside, see
        # _read_failed) charged each try, until one counted valid records as corrupt.
        head.scan_budget = budget
        self.corrupt_bytes += skip
        self.lost_events += events
        head.read_pos = found
        # A file shorter than its records say (cut by someone else while read): its
        # missing bytes were spooled and are lost, counted with the region.
        missing = min(max(end - _size_of(head.fd, end), 0), skip) if found == end else 0
        log.error("audit spool %s: %d bytes at offset %d of %s are torn or corrupt (a "
                  "crash while spooling, or a damaged disk)%s: lost, with the %d events "
                  "whose batch header could still be read in them; %s (%d corrupt bytes "
                  "so far)", self.directory, skip, start, head.path.name,
                  f", {missing} of them missing: the file was cut short (something else "
                  f"shortened it while it was replayed)"
                  if missing else "", events,
                  "replay goes on at the next valid record" if skip < end - start
                  else "they end the file, the records before them were kept",
                  self.corrupt_bytes)
        # Only once it is logged: killed between the two, the loss is logged (and
        # counted) again by the adopter, never by nobody.
        if found < end:  # else the file is removed now, which says it best
            self._save_progress(head)

    def commit(self) -> None:
        """The record :meth:`peek` returned was acknowledged: move past it."""
        head = self._files[0]
        length, head.peeked = head.peeked, None
        if length is None:
            raise RuntimeError("Spool.commit() without a record from peek()")
        head.read_pos += RECORD.size + length
        if head.read_pos >= head.size:
            self._remove_head()
        else:
            self._save_progress(head)

    def _remove_head(self) -> None:
        head = self._files[0]
        # Counted off before the file leaves the list: a reader without the worker's
        # lock (stats) that sees the spool empty also sees its bytes gone.
        self._used = max(self._used - head.size, 0)
        self._files.pop(0)
        if head is self._active:
            self._active = None
        try:
            _retire(head)
        except FileNotFoundError:
            _let_go(head)  # removed under us, replayed from its descriptor: closed too
        except OSError as exc:
            if head.unreadable:
                self._keep_unreadable(head, exc)
            else:
                self._keep_replayed(head, exc)
        else:
            if head.unreadable:
                self._say_set_aside(head)
            _let_go(head)
        # After the unlink: whoever takes the lock next finds the file gone, not left.
        self._release_adoption()
