"""The store's side of tamper evidence: it follows the active segment as records are
appended (chain head, running SHA-256, first and last record) and writes the signed
digests: at start, every ``digest_interval`` while records arrive, at each seal, before
retention deletes anything, and at a clean stop.

Only the store's commit thread calls it. The segment's running SHA-256 is updated on a
thread of its own, off the commit path (hashlib releases the GIL on large buffers, so it
runs on another core); a digest waits for it. A digest that cannot be written (disk
full) is logged and retried at the next tick; records are never refused for it.

Where the chain goes on when a ledger opens is ``ledger_chain_end``'s (a part ``Ledger``
inherits); what a digest says of a segment file, computed from its bytes, ``segment_state``'s.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit_middleware._counter import worth_saying
from audit_middleware.event import format_created
from collector.storage.in_the_way import DIGESTS, DIGESTS_THEN, refuse_other_than_a_dir
from collector.storage.segments import (
    DIR_MODE,
    SegmentFile,
    SegmentHeader,
    list_segment_files,
    segment_seq,
)

from . import chain as chains
from . import digests as d
from .errors import KeyFileError
from .keys import (
    KeyRing,
    SigningKey,
    default_signing_key_path,
    ensure_signing_key,
)
from .ledger_chain_end import _ChainEnd, _retired_keys, _Rotations
from .segment_state import Hash, _read_header, scan_segment

if TYPE_CHECKING:
    from collector.storage.segments import ActiveSegment

log = logging.getLogger("collector.integrity")


class Ledger(_ChainEnd):
    def __init__(self, data_dir: Path, key: SigningKey, interval: float) -> None:
        self.data_dir = data_dir
        self.digests_dir = data_dir / d.DIGESTS_DIR
        self.key = key
        self.interval = interval
        self.chain = chains.GENESIS  # the chain value of the newest record
        self.n = 0  # number of the newest digest
        self.previous = ""  # its signature
        self.newest: d.Digest | None = None
        self.last_error: str | None = None
        self.written = 0  # digests written since open
        self._state: d.SegmentState | None = None
        self._hash: Hash = hashlib.sha256()
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="audit-store-hash")
        self._hashed: Future[None] | None = None  # the newest update queued
        self._dirty = False  # records appended since the last digest
        self._due = time.monotonic() + interval
        self._pending: list[tuple[str, bytes, dict[str, Any]]] = []  # unwritten digests
        self._failures_in_a_row = 0  # digest writes failed in a row (the log says some)
        self.write_failures = 0  # digest writes failed since open (a metric's counter)

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, data_dir: Path, signing_key: Path | None, interval: float,
             quarantine_dir: Path | None = None) -> Ledger:
        """Load (or generate, 0600) the signing key, put its public key in the key ring,
        and find where the digest chain ends (a torn last digest line goes to
        ``quarantine_dir``)."""
        # Before anything reads it as "no digests" (a warning that nothing was signed)
        # or makes it: a FIFO or a file there was "[Errno 17] File exists".
        refuse_other_than_a_dir(data_dir / d.DIGESTS_DIR, DIGESTS, DIGESTS_THEN)
        ring = KeyRing(data_dir / "keys")
        ring.create()
        loose = ring.loose_mode()
        if loose is not None:  # said as the signing key's own loose mode is
            log.warning("integrity: %s", loose)
        path = signing_key or default_signing_key_path(data_dir)
        if not path.exists() and d.list_digest_files(data_dir / d.DIGESTS_DIR):
            # A new key would sign on silently, and every later digest would read as
            # signed by a key nobody trusts: a false tamper alarm from a typo.
            raise KeyFileError(
                f"the signing key {path} does not exist, but this store's digests were "
                f"signed with a key before: give the path of that key (signing_key, "
                f"--signing-key, AUDIT_SIGNING_KEY). If it is lost for good, make a new one "
                f"yourself (openssl genpkey -algorithm ed25519 -out {path}; chmod 600 "
                f"{path}): verify will then show where the new key took over")
        unsigned = (not d.list_digest_files(data_dir / d.DIGESTS_DIR)
                    and (data_dir / "segments").is_dir()
                    and list_segment_files(data_dir / "segments"))
        if unsigned:
            # A backup restored without digests/ (or a store from before signing): the
            # next digests sign only what comes after, and verify reports the rest.
            log.warning(
                "integrity: %d segment file(s) in %s and no digests: never signed, or their "
                "digests were not copied with them (restore digests/ and keys/ too, and "
                "the signing key). Signing starts from the active segment; `audit-collector "
                "verify` reports the older segments as 'digest missing'", len(unsigned),
                data_dir / "segments")
        key, _ = ensure_signing_key(path)
        ring.add(key.public)
        ledger = cls(data_dir, key, interval)
        ledger.digests_dir.mkdir(mode=DIR_MODE, exist_ok=True)
        retired = _retired_keys(path)
        for replaced in retired:
            # In the signing key's custody: a ring file of it that is junk (left out of
            # the ring, and verify from the ring reported what that key signed) is
            # written again, as the signing key's own is.
            ring.add(replaced)
        vouched = {k.id: k for k in (*retired, key.public)}
        rotations = _Rotations(ledger.digests_dir, vouched)
        ledger._find_chain_end(quarantine_dir, vouched, ring.keys(), rotations)
        ledger._finish_key_rotation(path, ring)
        ledger._refuse_a_retired_key(path, rotations)
        return ledger


    def named(self) -> tuple[int, int]:
        """The highest segment and record numbers the digests name: those of the newest
        digest (the segment it describes, the active segment it names as head, its last
        record). A new segment or record must be numbered after them."""
        newest = self.newest
        if newest is None:
            return 0, 0
        head = segment_seq(str(newest.head)) or 0
        return max(int(newest.segment_seq), head), int(newest.last_seq)

    def chain_after(self, files: list[SegmentFile]) -> str:
        """The chain value a new segment after ``files`` links to (their newest record's;
        the newest header's when it has no record yet)."""
        if not files:
            return chains.GENESIS.decode()
        state, _ = scan_segment(files[-1])
        return state.last_chain or chains.GENESIS.decode()

    def attach(self, path: Path, header: SegmentHeader) -> None:
        """Follow the active segment ``path`` (new, or reopened after a restart)."""
        state, running = scan_segment(SegmentFile(header.seq, path, False))
        self._state, self._hash = state, running
        self.chain = (state.last_chain or chains.GENESIS.decode()).encode()

    # -- appending (the commit thread, and its fsync thread) ------------------------------
    def appended(self, data: bytes, size: int, count: int, first: tuple[int, str, int],
                 last: tuple[int, str, int], last_chain: bytes) -> None:
        """``count`` records (``data``) were written and fsynced, ``first`` and ``last``
        being (seq, event id, created in microseconds) and ``last_chain`` the last one's
        chain value; ``size`` is the segment's new size."""
        # One worker thread: the updates run in the order they were queued.
        self._hashed = self._hasher.submit(self._hash.update, data)
        state = self._state
        assert state is not None, "attach() the active segment first"
        if state.records == 0:
            state.first_seq, state.first_id = first[0], first[1]
            state.first_time = format_created(first[2] * 1000)
        state.last_seq, state.last_id = last[0], last[1]
        state.last_time = format_created(last[2] * 1000)
        state.records += count
        state.size = size
        self.chain = last_chain
        state.last_chain = last_chain.decode()
        self._dirty = True

    # -- digests ---------------------------------------------------------------------------
    def started(self, sealed: list[SegmentFile], active: ActiveSegment) -> None:
        """At open: if the collector stopped between sealing a segment and writing its
        seal digest, write it now; then a start checkpoint of the active segment."""
        # Only the segment right before the active one, and only when the digest chain
        # exists and has no seal for it: re-signing anything older (or a store whose
        # digests were all removed) would launder whatever was done to it. And only when
        # the active segment holds no record yet: its first record is written only after
        # that seal is on disk (``require_seal``), so a crash never leaves more. With
        # records, the seal (and the newest digests with it) were removed after a clean
        # stop, and signing the segment now would sign whatever was done to it meanwhile.
        newest = self.newest
        last = sealed[-1] if sealed else None
        current = self._state
        if (last is not None and newest is not None and newest.segment_seq <= last.seq
                and not (newest.kind == "seal" and newest.segment_seq == last.seq)
                and not _has_seal(self.digests_dir / d.file_name(last.name))):
            if current is not None and current.records == 0:
                state, _ = scan_segment(last)
                self._write("seal", state, active.path.name, note=(
                    "written at start-up: the collector stopped after sealing the segment, "
                    "before its seal digest was written"))
            else:
                log.error("integrity: %s has no seal digest, yet %s after it holds records: "
                          "no crash leaves that (a segment's first record waits for the seal "
                          "before it), so it is not signed now; `audit-collector verify` "
                          "reports it (digests removed?)", last.name, active.path.name)
        if (newest is not None and newest.kind == "checkpoint" and current is not None
                and newest.body.get("why") == "stop" and newest.segment == active.path.name
                and current.size > int(newest.bytes)):
            # Signed as found all the same (what is there is the evidence); verify
            # reports it from the two digests, for good.
            log.error("integrity: %d bytes were added to %s while the collector was "
                      "stopped (after %s, the checkpoint of its clean stop): `audit-collector "
                      "verify` reports them as written while stopped", current.size -
                      int(newest.bytes), active.path.name, newest.where)
        self.checkpoint(active, "start")

    def flush(self) -> None:
        """Write the digests waiting now (``OSError`` if they cannot be: they stay
        queued, retried at every tick)."""
        if self._pending:
            self._flush_pending(strict=True)

    def require_seal(self) -> None:
        """Before the first record of a new segment: its predecessor's seal digest on
        disk (written now if it waits; ``OSError`` if it cannot be), so that no crash
        leaves records after an unsigned seal (see ``started``)."""
        self._flush_if_waiting("seal")

    def tick(self, active: ActiveSegment) -> None:
        """Housekeeping: retry unwritten digests; a checkpoint every ``interval`` while
        records arrive."""
        if self._pending:
            self._flush_pending()
        if self._dirty and time.monotonic() >= self._due:
            self.checkpoint(active, "interval")

    def checkpoint(self, active: ActiveSegment, why: str) -> None:
        self._write("checkpoint", self._current(), active.path.name, why=why)

    def sealed(self, old: ActiveSegment, new: ActiveSegment) -> None:
        """``old`` was sealed and ``new`` is the active segment: the seal digest of
        ``old`` (naming ``new`` as the head), then follow ``new``."""
        self._write("seal", self._current(), new.path.name)
        self.attach(new.path, new.header)

    def retention(self, deleted_below: int, active: ActiveSegment) -> None:
        """Before retention deletes the segments below ``deleted_below``: say so, signed
        (so ``verify`` can tell retention from someone deleting segments). Raises
        ``OSError`` when it cannot be written now (it stays queued, written first later)."""
        # One queued already (a full disk): that one first, not one more signed at every
        # pass (thousands an hour of a full disk, all written at its end). If it says
        # these deletions already (queued by the try that met the full disk, written
        # again in the reserve's room), only it: a second one said them twice, twice the
        # reserve for each such pass.
        if any(body["kind"] == "retention" and body["deleted_below"] >= deleted_below
               for _, _, body in self._pending):
            self._flush_pending(strict=True)
            return
        self._flush_if_waiting("retention")
        self._write("retention", self._current(), active.path.name,
                    deleted_below=deleted_below, strict=True)

    def forget(self, segment_name: str) -> None:
        """Retention deleted ``segment_name``: its digests go too."""
        (self.digests_dir / d.file_name(segment_name)).unlink(missing_ok=True)

    def rotate_key(self, new: SigningKey, active: ActiveSegment | None = None,
                   active_path: Path | None = None) -> None:
        """A key-rotation digest signed by the current key naming ``new``; later digests
        are signed with ``new``. Offline use (``keys rotate``): pass ``active_path``."""
        if active is not None:
            name, state = active.path.name, self._current()
        else:
            assert active_path is not None
            name, state = active_path.name, self._state_of_file(active_path)
        self._write("key_rotation", state, name, new_key=new.public.b64,
                    new_key_id=new.id, strict=True)
        self.key = new

    def stopped(self, active: ActiveSegment) -> None:
        """At a clean stop: a final checkpoint, so nothing is left unsigned."""
        if self._pending:
            self._flush_pending()
        self.checkpoint(active, "stop")
        if self._pending:
            # Lost with this process. If this run's start checkpoint is among them, the
            # newest digest on disk is the previous stop, and verify will take what this
            # run wrote for records added while the collector was stopped.
            log.error("integrity: %d digest(s) could not be written before the stop (%s); "
                      "the records they sign stay unsigned, and `audit-collector verify` may "
                      "report this run's records as written while the collector was stopped",
                      len(self._pending), self.last_error)

    def close(self) -> None:
        self._hasher.shutdown(wait=True)

    def stats(self) -> dict[str, Any]:
        state = self._state
        newest = self.newest
        return {"key": self.key.id, "digests": self.n, "written": self.written,
                "newest_digest": newest.time if newest else None,
                "chain_head": self.chain.decode(),
                # Read without the commit thread's lock, yet never negative once the
                # store is open: a digest of ``state``'s segment is a copy of that very
                # object, taken before ``newest`` was read here, and its ``records`` only
                # grow; a segment of another name counts 0. Only between ``attach`` and
                # ``started`` in ``Store.open`` (before anything reads this) can the
                # newest digest on disk name more records than the file holds (cut
                # while the collector was stopped; the start checkpoint then says what
                # is there): ``max`` is a guard only, no reader sees it at work.
                "unsigned_records": (max(0, state.records - _records_of(newest, state))
                                     if state else 0),
                "pending_digests": len(self._pending), "write_failures": self.write_failures,
                "last_error": self.last_error}

    # -- internals -------------------------------------------------------------------------
    def _current(self) -> d.SegmentState:
        assert self._state is not None, "attach() the active segment first"
        if self._hashed is not None:
            self._hashed.result()  # every queued update is done (one worker, in order)
        return replace(self._state, sha256=self._hash.hexdigest())

    def _state_of_file(self, path: Path) -> d.SegmentState:
        header = _read_header(path)
        self.attach(path, header)
        return self._current()

    def _write(self, kind: str, state: d.SegmentState, head: str, strict: bool = False,
               **extra: Any) -> None:
        clock = format_created(time.time_ns())
        signed_at = self._signing_time(clock)
        body: dict[str, Any] = {"digest": d.FORMAT, "n": self.n + 1, "kind": kind,
                                "time": signed_at, "key": self.key.id,
                                "previous": self.previous, **state.fields(), "head": head,
                                "interval_ms": round(self.interval * 1000), **extra}
        if signed_at != clock:
            # Dated after the clock (it stepped back): what the clock said goes with it,
            # signed, for verify's running-collector check (``d.CLOCK``).
            body[d.CLOCK] = clock
        line = d.sign(body, self.key)
        self.n += 1
        self.newest = d.parse(line)
        self.previous = self.newest.signature_b64
        self._dirty = False
        self._due = time.monotonic() + self.interval
        self._pending.append((state.name, line, body))
        self._flush_pending(strict)

    def _signing_time(self, now: str) -> str:
        """``now``, but never before the newest digest: the collector's clock stepped back
        (NTP correcting a clock that ran ahead, a VM restored) dated a digest before its
        predecessor, and verify called the untouched store tampered (``gap in time``).
        Verify still checks forged digests; an honest one is dated as signed, or with
        its predecessor's time while the clock catches up."""
        # Both are format_created's fixed-width text: they sort as the times do.
        return max(now, str(self.newest.time)) if self.newest is not None else now

    def _flush_if_waiting(self, kind: str) -> None:
        """Write the queued digests if one of ``kind`` is among them; ``OSError`` if
        they cannot be written now."""
        if any(body["kind"] == kind for _, _, body in self._pending):
            self._flush_pending(strict=True)

    def _flush_pending(self, strict: bool = False) -> None:
        while self._pending:
            name, line, _ = self._pending[0]
            try:
                d.append(self.digests_dir, name, line)
            except OSError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._failures_in_a_row += 1
                self.write_failures += 1
                n = self._failures_in_a_row
                if worth_saying(n):  # at 1, 2, 4, 8, ... failures: said, not a flood
                    log.error("audit store: cannot write a digest for %s (%s); retrying "
                              "(%d failures so far)", name, exc, n)
                if strict:
                    raise
                return
            self._pending.pop(0)
            self.written += 1
            self._failures_in_a_row = 0


def _records_of(digest: d.Digest | None, state: d.SegmentState) -> int:
    if digest is None or digest.segment != state.name:
        return 0
    return int(digest.records)


def _has_seal(path: Path) -> bool:
    try:
        return any(g.kind == "seal" for g in d.read_file(path).digests)
    except FileNotFoundError:
        return False
