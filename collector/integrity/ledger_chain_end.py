"""Where a ``Ledger`` takes up the digest chain when it opens (a part of ``Ledger``, which
inherits it): the walk back to the newest genuine digest, the key rotations the chain
recorded, a rotation ``keys rotate`` left unfinished, and a retired signing key refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from collector.storage.regular_files import read_regular
from collector.storage.segments import quarantine_torn

from . import digests as d
from .errors import KeyFileError
from .keys import (
    KeyRing,
    PublicKey,
    SigningKey,
    install_signing_key,
    load_signing_key,
    read_retired_keys,
)

log = logging.getLogger("collector.integrity")


class _ChainEnd:
    """``Ledger``'s start: where its digest chain goes on (see this module's doc)."""

    #: Set in ``Ledger.__init__`` (the chain end: here, from ``Ledger.open``).
    digests_dir: Path
    key: SigningKey
    n: int
    previous: str
    newest: d.Digest | None

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
