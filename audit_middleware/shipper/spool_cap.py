"""The spool's size cap: the directory's, shared by every process spooling there for one
collector (pre-forked workers), whose files grow and shrink unseen; counted again only
as often as it must be (see ``_SharedCap._room_for``)."""

from __future__ import annotations

import os
import time

from .spool_files import _SpoolFiles

#: The directory's bytes (``Spool._count_used``) are counted again once the count is
#: older than this many times what it took: counting costs the sink's thread about 1% of
#: its time at most, whatever the number of files (a count of 20,000 files took 105 ms:
#: made at each append, it slowed spooling until the queue overflowed).
RECOUNT_AGE = 100
#: A process appends at most ``max_bytes // RECOUNT_SHARE`` bytes (or one batch) on one
#: count: what each process spooling in the directory may pass the shared cap by.
RECOUNT_SHARE = 128
#: The clock that times the counts (a test's to replace).
_clock = time.monotonic


class _SharedCap(_SpoolFiles):
    """``Spool``'s counting of the shared cap."""

    #: Set, and said, in ``Spool.__init__``.
    max_bytes: int
    _used: int
    _counted_at: float
    _count_took: float
    _since: int

    def _room_for(self, size: int) -> bool:
        """Whether a record of ``size`` bytes fits under the cap. The cap is the
        directory's, shared by every process spooling there for this collector
        (pre-forked workers), whose files grow and shrink unseen: counted once and then
        only by its own appends, each of N workers filled the cap for itself. Counted
        at each append, a backlog of many files cost more than the fsync (see
        ``RECOUNT_AGE``). So the directory is counted again when the count is old, when
        this process appended its share of the cap since (``RECOUNT_SHARE``: what the
        others may not have seen), and before a refusal resting on its own appends (a
        batch is dropped only on a count with nothing of ours since: the others may
        have replayed meanwhile)."""
        if (self._since + size > self.max_bytes // RECOUNT_SHARE
                or _clock() - self._counted_at > RECOUNT_AGE * self._count_took
                or (self._since > 0 and self._used + size > self.max_bytes)):
            self._recount()
        return self._used + size <= self.max_bytes

    def _recount(self) -> None:
        start = _clock()
        self._used = self._count_used()
        self._counted_at = _clock()
        self._count_took = self._counted_at - start
        self._since = 0

    def _count_used(self) -> int:
        """Bytes of batch files where this user spools and adopts (see adopt_orphans),
        for this destination: another collector's files (another app's, sharing the
        directory) are never replayed here; counted, they filled this cap, and this app
        dropped its own batches while its spool held none. Theirs count against the
        cap of a sink of theirs. Regular files only, their own size: a symbolic link
        named like a spool file (a backup tool's, a shared directory's) is never
        replayed (see ``_Adoption._say_not_a_file``); followed, a link to a large file
        filled the cap, and every batch was dropped while the spool held none."""
        total = 0
        for place in {self.directory, self._private}:
            try:
                for entry in os.scandir(place):
                    if self._replays(entry.name):
                        try:
                            if entry.is_file(follow_symlinks=False):
                                total += entry.stat(follow_symlinks=False).st_size
                        except FileNotFoundError:
                            pass
            except OSError:  # gone, or not ours to read (reported where it matters)
                pass
        return total
