"""The store's side of tamper evidence: it follows the active segment as records are
appended (chain head, running SHA-256, first and last record) and writes the signed
digests: at start, every ``digest_interval`` while records arrive, at each seal, before
retention deletes anything, and at a clean stop.

Only the store's commit thread calls it. The segment's running SHA-256 is updated on a
thread of its own, off the commit path (hashlib releases the GIL on large buffers, so it
runs on another core); a digest waits for it. A digest that cannot be written (disk
full) is logged and retried at the next tick; records are never refused for it.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from audit_middleware._counter import worth_saying
from audit_middleware.event import format_created
from collector.storage.regular_files import open_regular, read_regular
from collector.storage.segments import (
    DIR_MODE,
    SegmentFile,
    SegmentHeader,
    iter_lines,
    list_segment_files,
    quarantine_torn,
    segment_seq,
)

from . import chain as chains
from . import digests as d
from .errors import DigestFormatError, KeyFileError
from .keys import (
    KeyRing,
    PublicKey,
    SigningKey,
    default_signing_key_path,
    ensure_signing_key,
    install_signing_key,
    load_signing_key,
    read_retired_keys,
)

if TYPE_CHECKING:
    from collector.storage.segments import ActiveSegment

log = logging.getLogger("collector.integrity")

Hash = Any  # hashlib's sha256 object

class Ledger:
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

    def _refuse_a_retired_key(self, path: Path, rotations: _Rotations) -> None:
        """Refuse a signing key a key rotation of the chain retired (the old key put back
        after losing the new one, or a rotation whose new key was lost before it was put
        in place). Looked up among all the digests at every start, not only on the walk
        back to the chain end nor only when ``<key>.retired.pub`` lists the key: the old
        key put back with a list from before its rotation, and a digest it signed after
        the rotation (by whoever holds it: why one rotates) at the chain end, and the
        collector chained onto that digest and signed on with the retired key."""
        retiring = rotations.retiring(self.key.id)
        if retiring is None:
            return
        # A key is rotated away from because it may have leaked: verify trusts it for
        # nothing after its rotation, so every digest it signed would be reported for
        # good, and no later key can make them valid. Refused as a missing key is: the
        # apps spool meanwhile, and a new key is one command away.
        raise KeyFileError(
            f"the signing key {path} holds key {self.key.id}, which {retiring.where} "
            f"retired (rotated to key {retiring.body.get('new_key_id')}): verify trusts a "
            f"retired key for nothing after its rotation, so every digest it signed would "
            f"be reported 'signature invalid', for good. Put the key it was rotated to in "
            f"place ({path.name}.tmp, if `keys rotate` left it there), or, if that key is "
            f"lost, a new one (openssl genpkey -algorithm ed25519 -out {path}; chmod 600 "
            f"{path}): the digest chain goes on with it")

    def _finish_key_rotation(self, path: Path, ring: KeyRing) -> None:
        """A ``keys rotate`` killed after recording the rotation, before putting the new
        key in place, left the new key in ``<key>.tmp``: the collector went on signing
        with the old key, the rotation silently undone. The rotation is finished here,
        from the key the digest names."""
        newest = self.newest
        if newest is None or newest.kind != "key_rotation":
            return
        wanted = str(newest.body.get("new_key_id", ""))
        if wanted == self.key.id:
            return
        tmp = path.with_name(path.name + ".tmp")
        try:
            new = load_signing_key(tmp) if tmp.exists() else None
        except KeyFileError:
            new = None
        if new is None or new.id != wanted:
            if newest.key == self.key.id:
                return  # the signing key is the one this rotation retired: refused next
            log.error("integrity: the newest digest (%s) rotates the signing key to %s, "
                      "but %s holds key %s and no finished rotation waits beside it (%s is "
                      "missing or holds another key)", newest.where, wanted, path, self.key.id,
                      tmp.name)
            return
        install_signing_key(tmp, path)
        new = load_signing_key(path)
        ring.add(new.public)
        log.warning("integrity: finished the key rotation %s -> %s that `keys rotate` "
                    "recorded but had not put in place (stopped before its end)",
                    self.key.id, new.id)
        self.key = new

    def _find_chain_end(self, quarantine_dir: Path | None, vouched: dict[str, PublicKey],
                        ring: dict[str, PublicKey], rotations: _Rotations) -> None:
        """Take up the digest chain where its newest genuine digest left it.

        Genuine means signed by the signing key or a key it replaced (``vouched``): the
        digests directory is writable by whoever writes the data directory, and a digest
        planted there, extended by the collector, broke the real chain from then on (and
        its numbers decided the next segment's and record's). Newer digests that no
        vouched key signed are skipped, said in the log, and left for ``verify``; so are
        those a replaced key signed after the key rotation that retired it (``rotations``):
        it was rotated away from because it may have leaked, and verify trusts it for
        nothing after its rotation.

        When no digest at all is signed by a vouched key, the key was lost and replaced
        by hand (``Ledger.open`` says how): the chain goes on from the newest digest a
        key of the key ring signed, then from the newest digest at all, with a warning;
        or that digest is a rotation to this key by a version that kept no list of the
        keys it retired (said as such: no tamper alarm)."""
        skipped: list[d.Digest] = []
        fallback: d.Digest | None = None  # the newest digest a key ring key signed
        newest_any: d.Digest | None = None
        for _, path in reversed(d.list_digest_files(self.digests_dir)):
            found = d.read_file(path)
            if found.torn and quarantine_dir is not None:
                _cut_torn_line(path, quarantine_dir)
            for digest in sorted(found.digests, key=lambda g: g.n, reverse=True):
                if _signed_by(digest, vouched) and not self._retired_signer(digest, rotations):
                    self._take_chain_end(digest, skipped)
                    return
                skipped.append(digest)
                newest_any = newest_any or digest
                if fallback is None and _signed_by(digest, ring):
                    fallback = digest
        end = fallback or newest_any
        if end is None:
            return  # no digest yet: the chain starts here
        if end is fallback and _rotates_to(end, self.key.public):
            # A rotation by a version that kept no list of the keys it retired, not
            # started since: the chain's newest digest hands it to this very key. Said
            # as the tamper alarm below, it alarmed operators for nothing. But whoever
            # writes the data directory can put a key in the ring, re-sign every digest
            # with it and end them with such a rotation (the signing key's public key
            # is in the ring): nothing here tells the two apart, so both are said, and
            # the old key is to be exported only if it is the one rotated from.
            log.warning(
                "integrity: the digest chain goes on from %s, a key rotation from key %s "
                "to the signing key (%s), which does not vouch for the key it replaced. "
                "Expected once after a rotation by a version that kept no `<signing "
                "key>.retired.pub` beside the key: `keys export` then asks for the old key; "
                "include it only if %s is the key you rotated from. If you made no such "
                "rotation, the digests may have been replaced (whoever writes the data "
                "directory can put a key in its key ring and sign such a rotation with "
                "it): run `audit-collector verify` with the public keys you exported "
                "before", end.where, end.key, self.key.id, end.key)
        else:
            log.warning(
                "integrity: no digest of this store is signed by the signing key (%s) or a "
                "key it replaced; the digest chain goes on from %s, signed by key %s%s. "
                "Expected once after a lost signing key was replaced by hand; otherwise the "
                "digests may have been replaced: run `audit-collector verify` with the "
                "public keys you exported", self.key.id, end.where, end.key,
                "" if end is fallback else ", which is not in the key ring either")
        self.newest, self.n, self.previous = end, end.n, end.signature_b64

    def _retired_signer(self, digest: d.Digest, rotations: _Rotations) -> bool:
        """Whether a key the signing key replaced signed ``digest`` after the rotation
        that retired it. The signing key's own digests are the collector's (a retired
        key put back is refused after the walk, ``_refuse_a_retired_key``)."""
        if digest.key == self.key.id:
            return False
        rotation = rotations.retiring(digest.key)
        return rotation is not None and digest.n > rotation.n

    def _take_chain_end(self, digest: d.Digest, skipped: list[d.Digest]) -> None:
        """Go on from ``digest`` (signed by a vouched key), or from a newer digest of the
        chain a key rotation since it vouches for. ``skipped``: the digests the walk met
        before it (newer files, or newer in its file), none signed by a vouched key.

        A key rotation recorded by a vouched key hands the chain to the key it names: a
        signing key lost after a rotation and replaced by hand (or restored from a
        backup older than the rotation) vouches for the keys before the rotation only,
        and the chain went on from the rotation's digest, every digest after it taken
        for planted: the next digests took their numbers again (verify: chain broken)."""
        later = sorted((g for g in skipped if g.n > digest.n), key=lambda g: g.n)
        rotated: dict[str, PublicKey] = {}  # keys handed the chain since ``digest``
        for g in (digest, *later):
            if g.kind != "key_rotation" or not (g is digest or _signed_by(g, rotated)):
                continue  # a rotation is followed only from a key of the chain (few)
            try:
                new = PublicKey.from_b64(g.body.get("new_key"))
            except KeyFileError:
                continue
            rotated[new.id] = new
        # The newest one such a key signed (the first one tried, unless planted ones
        # came after it): not every digest since the rotation verified at each start.
        end = next((g for g in reversed(later) if _signed_by(g, rotated)), digest)
        newer = [g for g in skipped if g.n > end.n or g.key not in rotated]
        if newer:
            log.error(
                "integrity: %d digest(s) newer than %s are not signed by the signing key or "
                "by a key it replaced before that key's rotation (%s): planted or edited, "
                "they are not continued. The chain goes on from %s; `audit-collector "
                "verify` reports them",
                len(newer), digest.where, ", ".join(g.where for g in newer[:5])
                + (", ..." if len(newer) > 5 else ""), end.where)
        if end is not digest:
            log.warning(
                "integrity: the digest chain goes on from %s, signed by key %s, which a key "
                "rotation recorded in the chain handed it to, but which the signing key "
                "(%s) does not vouch for: expected once after the signing key was lost "
                "after that rotation and replaced by hand (or restored from a backup older "
                "than it)", end.where, end.key, self.key.id)
        self.newest, self.n, self.previous = end, end.n, end.signature_b64

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


def _retired_keys(path: Path) -> list[PublicKey]:
    """The keys the signing key at ``path`` replaced (kept beside it by ``keys
    rotate``): with it, the keys a genuine digest of this store is signed by."""
    try:
        return read_retired_keys(path)
    except KeyFileError as exc:
        log.error("integrity: %s; digests signed by the keys it held are taken as the "
                  "key ring's only", exc)
        return []


class _Rotations:
    """The key rotations of the digest chain, by the key each retired: read from every
    digest file, once, on first use (every start asks whether they retired the signing
    key). Only a file that holds a rotation is parsed: the others are read, not parsed."""

    def __init__(self, digests_dir: Path, keys: dict[str, PublicKey]) -> None:
        self._digests_dir = digests_dir
        self._keys = keys  # the keys a rotation counts from: a planted one retires nothing
        self._by_key: dict[str, d.Digest] | None = None

    def retiring(self, key_id: str) -> d.Digest | None:
        """The first rotation that retired ``key_id`` (signed by it, to another key)."""
        if self._by_key is None:
            self._by_key = self._read()
        return self._by_key.get(key_id)

    def _read(self) -> dict[str, d.Digest]:
        found: dict[str, d.Digest] = {}
        for _, path in d.list_digest_files(self._digests_dir):
            try:
                data = read_regular(path, d.MAX_FILE_BYTES)
            except OSError:
                continue  # verify reports an unreadable digest file
            if not _may_hold_a_rotation(data):
                continue
            for g in d.parse_file(path, data).digests:
                if (g.kind == "key_rotation" and g.body.get("new_key_id") != g.key
                        and _signed_by(g, self._keys)
                        and (g.key not in found or g.n < found[g.key].n)):
                    found[g.key] = g
        return found


def _may_hold_a_rotation(data: bytes) -> bool:
    """Whether digest file bytes may hold a key rotation: its kind's name, or an escape
    that could spell it (the collector writes none; one put there by hand still counts)."""
    return b"key_rotation" in data or b"\\" in data


def _rotates_to(digest: d.Digest, key: PublicKey) -> bool:
    """Whether ``digest`` is a key rotation that hands the chain to ``key``."""
    return digest.kind == "key_rotation" and digest.body.get("new_key") == key.b64


def _signed_by(digest: d.Digest, keys: dict[str, PublicKey]) -> bool:
    key = keys.get(digest.key)
    return key is not None and key.verifies(digest.signature, digest.message)


def _records_of(digest: d.Digest | None, state: d.SegmentState) -> int:
    if digest is None or digest.segment != state.name:
        return 0
    return int(digest.records)


def _read_header(path: Path) -> SegmentHeader:
    with open_regular(path) as f:
        return SegmentHeader.parse(f.readline(64 * 1024), path.name)


def scan_segment(file: SegmentFile) -> tuple[d.SegmentState, Hash]:
    """What a digest of ``file`` says, computed from its bytes (complete lines only),
    and the running hash of those bytes."""
    running = hashlib.sha256()
    state: d.SegmentState | None = None
    first = last = b""
    records = 0
    size = 0
    for offset, line in _lines(file):
        running.update(line)
        size = offset + len(line)
        if state is None:
            header = SegmentHeader.parse(line, file.path.name)
            state = d.SegmentState(file.name, header.id, header.seq, header.chain,
                                   last_chain=header.chain)
            continue
        records += 1
        if not first:
            first = line
        last = line
    if state is None:
        raise DigestFormatError(f"{file.path.name} has no header line")
    state.size, state.records, state.sha256 = size, records, running.hexdigest()
    for line, end in ((first, "first"), (last, "last")):
        if not line:
            continue
        try:
            record = orjson.loads(line)
            setattr(state, f"{end}_seq", int(record["seq"]))
            setattr(state, f"{end}_id", str(record["id"]))
            setattr(state, f"{end}_time", str(record["created"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            pass  # not a record: verify reports it; the digest says what is there
    if last:
        value = chains.chain_of(last)
        state.last_chain = value.decode() if value else ""
    return state, running


def _lines(file: SegmentFile) -> Iterator[tuple[int, bytes]]:
    with open_regular(file.path) as raw:
        if file.compressed:
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                yield from iter_lines(f)
        else:
            yield from iter_lines(raw)


def _has_seal(path: Path) -> bool:
    try:
        return any(g.kind == "seal" for g in d.read_file(path).digests)
    except FileNotFoundError:
        return False


def _cut_torn_line(path: Path, quarantine_dir: Path) -> None:
    """Move an unterminated last line (a crash mid-write) to quarantine."""
    data = read_regular(path, d.MAX_FILE_BYTES)
    end = data.rfind(b"\n") + 1
    # A repair killed between its copy and its cut is finished, not refused (the copy's
    # name repeats within the second: FileExistsError failed the next start).
    target = quarantine_torn(path, end, data[end:], quarantine_dir)
    with open(path, "r+b") as f:
        f.truncate(end)
        os.fsync(f.fileno())
    log.warning("cut a torn digest line from %s into %s", path.name, target.name)
