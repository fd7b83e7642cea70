"""The store's acknowledging of losses (a part of ``Store``, which inherits it): an
operator's acknowledgement planned, staged beside its file, then kept or dropped
(``StagedLossAck``) one at a time, and the acknowledgements of the sources retention
forgets taken out of memory and of the file.

What the acknowledgements are, and their file's format (``loss-acks.json``, staged and
put in place), is ``collector.storage.loss_acks``.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from audit_middleware.event import format_created
from audit_middleware.wire import MAX_SEQ
from collector.storage import loss_acks
from collector.storage.errors import StorageError, StoreClosedError

if TYPE_CHECKING:
    from collector.storage.group_commit import GroupWriter
    from collector.store_settings import StorageSettings

__all__ = ["LossAckError", "StagedLossAck", "UnknownSourceError"]

log = logging.getLogger("collector.store")

#: Seconds an acknowledgement of losses waits for another one under way (staged, its
#: record being written) before it is refused.
ACK_WAIT: Final = 30.0


class _LossAcknowledging:
    """``Store``'s acknowledging of losses (see this module's doc)."""

    #: Set, and said, in ``Store.__init__`` (``_writer``: in ``Store.open``).
    settings: StorageSettings
    _writer: GroupWriter
    _loss_acks: dict[str, loss_acks.Ack]
    _acks_lock: threading.Lock
    _acks_unsaved: str | None
    _forgotten_unsaved: bool

    def _forget_loss_acks(self, forgotten: list[str]) -> None:
        """Sources retention forgot take their acknowledgements with them (on the commit
        thread). Kept, they stayed in memory and in the file until the next
        acknowledgement was saved, and a source of the same name later (a client that
        names its own source) had its new losses, up to the old number, taken for
        acknowledged: an alert too few."""
        gone = set(forgotten)
        with self._writer.lock:  # as ``StagedLossAck.keep``, which filters by the sources
            if gone.isdisjoint(self._loss_acks):
                return
            self._loss_acks = {name: ack for name, ack in self._loss_acks.items()
                               if name not in gone}
            self._forgotten_unsaved = True
        # Never waited for: an acknowledgement under way waits on this thread for its
        # record. Whoever ends it (kept, dropped) rewrites the file without them
        # (``_release_acks``).
        if not self._acks_lock.acquire(blocking=False):
            return
        # Read under the lock, not before it: an acknowledgement kept between the two is
        # in them (written as they were, the file lost it).
        self._release_acks()

    def _release_acks(self) -> None:
        """Let ``_acks_lock`` go, the file first rewritten without the sources retention
        forgot if it may still name some (``_forgotten_unsaved``): the lock's holder was
        the one to, as retention's own rewrite never waits for it."""
        saved = True
        try:
            if self._forgotten_unsaved:
                saved = self._save_forgotten()
        finally:
            self._acks_lock.release()
        # Retention forgot more after the rewrite took its copy, and found the lock still
        # held: again, as long as it does (once was not enough: a source forgotten during
        # the second rewrite stayed in the file), unless someone took the lock meanwhile
        # (who rewrites as it lets go). It ends: retention forgets each source once. Not
        # after a rewrite the disk refused: not retried without end.
        while saved and self._forgotten_unsaved and self._acks_lock.acquire(blocking=False):
            try:
                saved = self._save_forgotten()
            finally:
                self._acks_lock.release()

    def _save_forgotten(self) -> bool:
        """Write the acknowledgements that apply once retention forgot some sources
        (``_loss_acks``) to the file, under ``_acks_lock``. With a recorded one's rename
        pending, its staged file is replaced (naming the same record), then put in
        place: left as it was, the next start put it in place, sources forgotten and
        all, and handed their acknowledgements to new sources of the same names. A
        failure is logged (False): they no longer apply meanwhile."""
        data_dir = self.settings.data_dir
        # The copy and the flag at once: a source forgotten after the copy sets it again.
        with self._writer.lock:
            acks, self._forgotten_unsaved = dict(self._loss_acks), False
        try:
            if self._acks_unsaved is None:
                loss_acks.save(data_dir, acks)
                return True
            # Claimed by its record: the next start puts this, without them, in place.
            staged = loss_acks.restage(data_dir, acks, self._acks_unsaved)
        except OSError as exc:
            self._forgotten_unsaved = True  # for the next holder of the lock, or start
            log.warning("audit store: cannot rewrite %s without the source(s) retention "
                        "forgot (%s): they are left out from now on, and from the file at "
                        "the next acknowledgement or start", loss_acks.FILE_NAME, exc)
            return False
        try:
            loss_acks.commit(staged)
        except OSError:
            return True  # still pending (logged as it failed first): staged as it applies
        self._acks_unsaved = None
        return True

    def _save_unsaved_acks(self, record: str) -> None:
        """Put in place the staged file of an earlier acknowledgement, recorded (by
        ``record``) and applied. Staging over it would lose it, were the next one's
        record then refused: until it can be, the next one is refused (before its
        record: nothing claimed). Under ``_acks_lock``."""
        data_dir = self.settings.data_dir
        try:
            try:
                loss_acks.commit(data_dir / loss_acks.STAGED_NAME)
            except FileNotFoundError:  # removed meanwhile: what it held is in memory
                loss_acks.commit(loss_acks.stage(data_dir, self._loss_acks, record))
        except OSError as exc:
            raise StorageError(
                f"an earlier acknowledgement, recorded and applied, cannot be put in "
                f"{loss_acks.FILE_NAME} ({exc}): make the data directory writable, then "
                f"try again") from None
        self._acks_unsaved = None

    def plan_loss_ack(self, source: str | None, through: int | None = None) -> dict[str, int]:
        """What acknowledging the losses of ``source`` (None: of every source with a loss
        not yet acknowledged) up to ``through`` (None, or past it: every number the
        source is known to have given out so far) covers: {source: through}. Raises
        ``LossAckError`` for a source the store does not know or a ``through`` out of
        range."""
        writer = getattr(self, "_writer", None)
        if writer is None:
            raise StoreClosedError("open the store before acknowledging losses")
        if through is not None and (type(through) is not int or not 1 <= through <= MAX_SEQ):
            raise LossAckError(f"through must be a number from 1 to 2**63-1, got {through!r}")
        with writer.lock:
            known, numbered = dict(writer.sources), dict(writer.numbered)
        if source is not None and source not in known:
            raise UnknownSourceError(f"no source {source[:80]!r} is known to this store "
                                     f"(the sources with losses are in `audit-collector "
                                     f"losses`)")
        acks = self._loss_acks
        plan: dict[str, int] = {}
        for name in [source] if source is not None else known:
            ranges, said = known[name], numbered.get(name, 0)
            previous = acks[name].through if name in acks else 0
            if source is None and loss_acks.unacknowledged(ranges, said, previous) == (0, 0):
                continue  # "all": only the sources with a loss not yet acknowledged
            # Never past what the source has given out: a loss not yet made cannot be
            # known, and acknowledged ahead it would never raise the alert.
            upto = loss_acks.latest(ranges, said)
            if through is not None:
                upto = min(through, upto)
            if upto < 1:  # only unnumbered events (seq 0): it can have lost none
                raise LossAckError(f"source {name[:80]!r} numbered none of its events: "
                                   f"it has no loss to acknowledge")
            plan[name] = upto
        return plan

    def acknowledge_losses(self, plan: dict[str, int], *, by: str, reason: str) -> None:
        """Keep a ``plan_loss_ack`` at once (``stage_loss_ack``, then ``keep``)."""
        staged = self.stage_loss_ack(plan, by=by, reason=reason)
        if staged is not None:
            staged.keep()

    def stage_loss_ack(self, plan: dict[str, int], *, by: str, reason: str,
                       record: str | None = None) -> StagedLossAck | None:
        """Write what keeping a ``plan_loss_ack`` (``by``: who, ``reason``: why) makes of
        the acknowledgements, without putting it in place yet: the API records the
        acknowledgement between the two (``record``: the id of that record), so that
        neither a record of one never made nor one made without its record is left by a
        full disk. A source already acknowledged through as far or further keeps its
        acknowledgement. None: this very acknowledgement is made already
        (``loss_acks.made_already``), nothing to write or record. Raises
        ``LossAckError`` without a reason, ``StorageError`` when it cannot be written
        (nothing changes then). Until ``keep`` or ``drop``, other acknowledgements wait."""
        reason = reason.strip()
        if not reason or len(reason) > loss_acks.MAX_REASON:
            raise LossAckError(f"say why in 1 to {loss_acks.MAX_REASON} characters (reason)")
        for name, upto in plan.items():
            # What ``loss_acks.load`` would refuse, and with it every other source's.
            if type(upto) is not int or not 1 <= upto <= MAX_SEQ:
                raise LossAckError(f"through must be a number from 1 to 2**63-1, got "
                                   f"{upto!r} for {name[:80]!r}")
        writer = self._writer
        with writer.lock:
            known = set(writer.sources)
        now = format_created(time.time_ns())
        # One at a time, from staging to keeping (or dropping); released by the thread
        # that ends it, which need not be the one that staged.
        if not self._acks_lock.acquire(timeout=ACK_WAIT):
            raise StorageError(f"another acknowledgement of losses has been under way for "
                               f"{ACK_WAIT:g} s: try again")
        try:
            if self._acks_unsaved is not None:
                self._save_unsaved_acks(self._acks_unsaved)
            acks = dict(self._loss_acks)
            # Under the lock: a retry that came while the first was still under way
            # sees it kept (or dropped) by now.
            made = loss_acks.made_already(acks, plan, by=by, reason=reason)
            if not made:
                # Never lowered: an acknowledgement through a lower number (or one
                # planned before another and kept after it: two readers at once, whose
                # records and threads may come in either order) takes back nothing
                # acknowledged.
                acks.update((name, loss_acks.Ack(upto, now, by, reason))
                            for name, upto in plan.items()
                            if name not in acks or acks[name].through < upto)
                # Sources retention forgot take their acknowledgements with them.
                acks = {name: ack for name, ack in acks.items() if name in known}
                staged = loss_acks.stage(self.settings.data_dir, acks, record)
        except OSError as exc:
            self._acks_lock.release()
            raise StorageError(f"cannot write {loss_acks.FILE_NAME}: {exc}") from None
        except BaseException:
            self._acks_lock.release()
            raise
        if made:
            self._release_acks()
            return None
        return StagedLossAck(self, acks, staged, record)



class StagedLossAck:
    """Acknowledgements written beside their file (``Store.stage_loss_ack``): ``keep``
    puts them in place, ``drop`` forgets them; either ends the acknowledgement."""

    def __init__(self, store: _LossAcknowledging, acks: dict[str, loss_acks.Ack], staged: Path,
                 record: str | None = None) -> None:
        self._store, self._acks, self._staged, self._record = store, acks, staged, record
        self._ended = False

    def keep(self) -> None:
        """Make the acknowledgement. Staged with a ``record`` (written by now), it is
        made even if the file cannot take its place: the record already says it was.
        It applies at once, and the staged file is put in place at the next
        acknowledgement or start (``Store._load_loss_acks``). Without one, raises
        ``StorageError`` then (nothing changes)."""
        self._end()
        store = self._store
        try:
            try:
                loss_acks.commit(self._staged)
            except OSError as exc:
                if self._record is None:
                    self._staged.unlink(missing_ok=True)
                    raise StorageError(f"cannot put {loss_acks.FILE_NAME} in place: "
                                       f"{exc}") from None
                log.error("audit store: cannot put %s in place (%s): the acknowledgement "
                          "recorded by %s applies, and is put in place at the next "
                          "acknowledgement or start", loss_acks.FILE_NAME, exc,
                          self._record)
                store._acks_unsaved = self._record
            writer = store._writer
            with writer.lock:  # retention may have forgotten some since they were staged
                applied = {name: ack for name, ack in self._acks.items()
                           if name in writer.sources}
                store._loss_acks = applied
            if len(applied) < len(self._acks):
                # Retention's own rewrite did not wait for this acknowledgement: the
                # file just put in place (or left staged) names them, and the next
                # start would hand their acknowledgements to new sources of the same
                # names.
                store._forgotten_unsaved = True
        finally:
            store._release_acks()

    def drop(self) -> None:
        self._end()
        try:
            self._staged.unlink(missing_ok=True)
        finally:
            # The file in place, which retention's rewrite left to this one, may still
            # name the sources it forgot meanwhile.
            self._store._release_acks()

    def abandon(self) -> None:
        """Neither kept nor dropped: whether its record was written is not known (the
        collector stopping cancelled the write as the commit thread had it). Its staged
        file stays for the next start, which puts it in place if the record is in the
        index and removes it if not; until then no other acknowledgement is staged over
        it (they wait, then are refused: the lock stays held)."""
        self._end()
        log.warning("audit store: the acknowledgement of losses recorded by %s was cut "
                    "short by the stop: the next start makes it if its record was "
                    "written", self._record)

    def _end(self) -> None:
        if self._ended:
            raise StorageError("this staged acknowledgement was kept or dropped already")
        self._ended = True


class LossAckError(StorageError):
    """An acknowledgement of losses the store cannot take as asked (the caller's to fix)."""


class UnknownSourceError(LossAckError):
    """An acknowledgement of a source the store does not know."""
