"""The digests of a data directory as ``verify`` checks them: each file read, each
digest's signature against the trusted keys (following key rotations), the chain of
digests (numbers without gaps, each carrying its predecessor's signature, times that do
not run backwards), and anchors kept elsewhere."""

from __future__ import annotations

import base64
import itertools
import time
from pathlib import Path
from typing import Final

from collector.storage.errors import StorageError
from collector.storage.records import created_micros
from collector.storage.time_limit import checked

from . import digests as d
from .errors import KeyFileError
from .findings import (
    CHAIN_BROKEN,
    DIGEST_MISSING,
    DIGEST_MOVED,
    GAP_IN_TIME,
    SIGNATURE_INVALID,
    FileResult,
    Results,
)
from .keys import PublicKey
from .scan import ranges

#: A digest may be dated this much before the one it follows (clock adjustments).
CLOCK_SLACK_US: Final = 300 * 1_000_000
#: Seconds a fresh reading of the retention digests stands for (see _fresh_deleted_below).
_FRESH_FOR: Final = 1.0
#: Why an anchored digest is not in the chain. Both look alike from the files: a chain
#: re-signed by the key holder, and one cut back (the newest digests removed, an older
#: backup of the data directory restored) to before the anchored digest. Said as
#: "re-signed" alone, a restored backup read as a leaked key.
_ANCHOR_GONE: Final = ("the digests from it on were removed (the log cut back, or an older "
                       "backup restored) or re-signed by the key holder")


class DigestChain:
    def __init__(self, digests_dir: Path, keys: list[PublicKey], results: Results,
                 live: bool = False) -> None:
        self.digests_dir = digests_dir
        self.live = live  # a collector runs on the directory, writing digests meanwhile
        self.trusted = {k.id: k for k in keys}
        self.results = results
        self.good: list[d.Digest] = []  # signature-valid digests, by number
        self.deleted_below = 0  # segments below this seq were deleted by retention
        self.unverified: set[str] = set()  # segments with a digest whose signature fails
        self.invalid_numbers: set[int] = set()  # numbers of those digests
        self.by_digest: dict[int, FileResult] = {}  # id(digest) -> its file's result
        #: key id -> the key rotation digest that retired it: it signs nothing after it.
        self.retired: dict[str, d.Digest] = {}
        self._fresh: tuple[float, int] | None = None  # (when, deleted_below) re-read

    def check(self) -> None:
        self._check_signatures(self._read_files())
        self._check_chain()

    def result_of(self, digest: d.Digest) -> FileResult:
        return self.by_digest[id(digest)]

    def seal_since(self, segment: str) -> d.Digest | None:
        """A seal of ``segment`` signed by a trusted key, written since ``check`` (next to
        a running collector, the segment was sealed in between); None if there is none."""
        return next((g for g in self.digests_since(segment) if g.kind == "seal"), None)

    def digests_since(self, segment: str) -> list[d.Digest]:
        """The trusted digests of ``segment``'s digest file as it is now (next to a
        running collector, more may have been written since ``check``)."""
        try:
            found = d.read_file(self.digests_dir / d.file_name(segment))
        except OSError:
            return []
        return [g for g in found.digests if g.segment == segment and self._trusted(g)]

    def retention_since(self, seq: int) -> bool:
        """Whether a signed retention digest, also one written since ``check`` (next to a
        running collector), deletes segment ``seq``."""
        return seq < max(self.deleted_below, self._fresh_deleted_below())

    def _fresh_deleted_below(self) -> int:
        """``deleted_below`` of the retention digests as the files are now. Read again
        at most every ``_FRESH_FOR`` seconds: verify asks once per segment it misses,
        and re-reading every digest file each time made a mass deletion quadratic."""
        now = time.monotonic()
        if self._fresh is not None and now - self._fresh[0] < _FRESH_FOR:
            return self._fresh[1]
        below = 0
        for _, path in d.list_digest_files(self.digests_dir):
            try:
                found = d.read_file(path)
            except OSError:
                continue
            for g in found.digests:
                value = g.body.get("deleted_below")
                if (g.kind == "retention" and type(value) is int and value > below
                        and self._trusted(g)):
                    below = value
        self._fresh = (now, below)
        return below

    def _trusted(self, g: d.Digest) -> bool:
        return _signature_problem(g, self.trusted.get(g.key), self._retired_by(g)) is None

    def _retired_by(self, g: d.Digest) -> d.Digest | None:
        """The key rotation that retired ``g``'s key before ``g`` was numbered, if any.
        A key is rotated away from because it may have leaked: trusted after its
        rotation, whoever holds it re-signed everything after the newest anchor (an
        anchored rotation included) and verify, given the exported keys, said valid."""
        rotation = self.retired.get(g.key)
        return rotation if rotation is not None and g.n > rotation.n else None

    def _read_files(self) -> list[tuple[FileResult, d.DigestFile]]:
        out: list[tuple[FileResult, d.DigestFile]] = []
        if not self.digests_dir.is_dir():
            self.results.notes.append("there is no digests/ directory: nothing here was "
                                      "ever signed")
            return out
        newest = max((seq for seq, _ in d.list_digest_files(self.digests_dir)), default=0)
        # ``checked``: under ``verify --timeout``, a store's digests (a year of them,
        # read and their signatures checked before any segment) are stopped at its
        # limit, not let run 1 s past it and then blamed on a hung disk.
        for path in checked(sorted(self.digests_dir.iterdir())):
            named = d.segment_of_file(path.name)
            if named is None:
                res = self.results.of(f"{d.DIGESTS_DIR}/{path.name}", "digests", 0)
                res.add(DIGEST_MOVED, "not named like a digest file "
                        "(segment-<seq>-<time>.digests.jsonl): renamed or put here")
                continue
            segment, seq = named
            res = self.results.of(f"{d.DIGESTS_DIR}/{path.name}", "digests", seq)
            try:
                found = d.read_file(path)
            except FileNotFoundError:
                if self.retention_since(seq):  # next to a running collector
                    res.notes.append("deleted by retention while verify ran")
                else:
                    res.add(DIGEST_MISSING, "removed while verify was reading it")
                continue
            except OSError as exc:
                res.add(DIGEST_MISSING, f"cannot be read: {exc}")
                continue
            if not found.digests and not found.problems and seq == newest and self.live:
                # A running collector creates the file, then writes its first line: verify
                # came in between. (Stopped, it never leaves one empty: its next start
                # writes into the active segment's file.)
                res.notes.append("empty: its first digest was being written")
            elif not found.digests and not found.problems:
                res.add(DIGEST_MISSING, "the file is empty (the collector creates it with "
                        "its first digest): its digests were removed")
            for problem in found.problems:
                # A crash mid-write can cut the newest file's last line, and no other.
                if found.torn and problem.endswith("(no newline)") and seq == newest:
                    res.notes.append(f"{problem}: a digest being written when the collector "
                                     f"stopped (its next start moves it to quarantine/)")
                else:
                    res.add(SIGNATURE_INVALID, f"{problem}: not a signed digest")
            for g in found.digests:
                if g.segment != segment:
                    res.add(DIGEST_MOVED, f"{g.where} describes {g.segment}, not {segment}: "
                            f"the digest file was renamed or its lines moved")
            res.records = len(found.digests)
            out.append((res, found))
        return out

    def _check_signatures(self, files: list[tuple[FileResult, d.DigestFile]]) -> None:
        """Each digest against the trusted keys; a valid key rotation trusts its new key
        from then on (so an export taken before a rotation still verifies after it)."""
        entries = sorted(((g, res) for res, f in files for g in f.digests),
                         key=lambda e: e[0].n)
        for g, res in checked(entries):
            self.by_digest[id(g)] = res
            key = self.trusted.get(g.key)
            problem = _signature_problem(g, key, self._retired_by(g))
            if problem is not None:
                res.add(SIGNATURE_INVALID, problem)
                self.unverified.add(g.segment)
                self.invalid_numbers.add(g.n)
                continue
            self.good.append(g)
            if g.kind == "key_rotation":
                try:
                    new = PublicKey.from_b64(g.body.get("new_key"))
                except KeyFileError as exc:
                    res.add(SIGNATURE_INVALID, f"{g.where}: {exc}")
                    continue
                self.trusted.setdefault(new.id, new)
                if new.id != g.key:
                    self.retired.setdefault(g.key, g)
            if g.kind == "retention":
                below = g.body.get("deleted_below")
                if type(below) is int:
                    self.deleted_below = max(self.deleted_below, below)

    def _check_chain(self) -> None:
        previous: d.Digest | None = None
        for number, group in itertools.groupby(self.good, key=lambda g: g.n):
            copies = list(group)
            g = copies[0]
            res = self.by_digest[id(g)]
            for extra in copies[1:]:
                self.by_digest[id(extra)].add(
                    CHAIN_BROKEN, f"{extra.where} has the same number as {g.where}")
            if previous is None:
                self._check_chain_start(g, res)
            elif previous.n != number - 1:
                gone = [n for n in range(previous.n + 1, number)
                        if n not in self.invalid_numbers]  # those are reported already
                if gone and self._retention_between(previous, g):
                    self.results.notes.append(
                        f"digest(s) #{ranges(gone)} were deleted by retention with their "
                        f"segments while verify read the digests")
                elif gone:
                    res.add(DIGEST_MISSING, f"digest(s) #{ranges(gone)} missing (between "
                            f"{previous.where} and {g.where})")
            elif g.previous != previous.signature_b64:
                res.add(CHAIN_BROKEN, f"{g.where} does not carry the signature of digest "
                        f"#{previous.n}: it belongs to another chain")
            if previous is not None:
                earlier = micros(previous.time) - micros(g.time)
                if earlier > CLOCK_SLACK_US:
                    res.add(GAP_IN_TIME, f"{g.where} is dated {g.time}, "
                            f"{earlier / 1e6:.0f} s before digest #{previous.n} "
                            f"({previous.time})")
            previous = g

    def _retention_between(self, previous: d.Digest, g: d.Digest) -> bool:
        """Whether retention, since verify listed the digest files, deleted those of
        ``previous``'s segment up to ``g``'s: what was between them went with them."""
        below = max(self.deleted_below, self._fresh_deleted_below())
        return bool(previous.segment_seq < below and g.segment_seq <= below)

    def _check_chain_start(self, g: d.Digest, res: FileResult) -> None:
        if g.n == 1:
            if g.previous:
                res.add(CHAIN_BROKEN, f"{g.where} is the first digest but names a previous one")
            return
        # Retention deletes the segments below deleted_below with their digests: the
        # chain then starts in the oldest segment it kept, not later (the kept segments
        # after it removed as well, digests and all, are not retention's doing).
        # A retention digest may have been written since the files were read (next to a
        # running collector): the chain then starts in a segment it deleted meanwhile.
        below = self.deleted_below
        if not (below and g.segment_seq <= below):
            below = max(below, self._fresh_deleted_below())
        if below and g.segment_seq <= below:
            self.results.notes.append(f"the digest chain starts at #{g.n}: the digests before it "
                              f"were deleted with their segments by retention (segments "
                              f"below {below})")
            return
        res.add(DIGEST_MISSING, f"the digest chain starts at #{g.n}: digests #1-#{g.n - 1} "
                f"are not there, and no retention digest says their segments were deleted")

    def check_anchor(self, signature: str) -> FileResult:
        """A digest signature published or stored out of the key holder's reach must
        still be in the chain: each digest carries its predecessor's signature, so the
        anchored digest pins down every digest before it."""
        res = FileResult(f"anchor {signature[:16]}...", "anchor", 0)
        raw = base64.b64decode(signature.strip())  # the bytes: base64 has spare bits
        found = next((g for g in self.good if g.signature == raw), None)
        oldest = min((g.n for g in self.good), default=1)
        if found is None and oldest > 1 and self.deleted_below:
            # Not proof of re-signing: an anchor older than what retention kept cannot
            # be checked at all. Still no verdict of "valid" for it.
            res.add(CHAIN_BROKEN, f"no valid digest has this signature. The oldest digest "
                    f"kept is #{oldest}: retention deleted those before it with their "
                    f"segments (below {self.deleted_below}), so an anchor older than that "
                    f"cannot be checked; if this anchor is newer, {_ANCHOR_GONE}")
        elif found is None:
            res.add(CHAIN_BROKEN, f"no valid digest has this signature: {_ANCHOR_GONE} (or "
                    f"the anchor belongs to another store)")
        else:
            res.notes.append(f"is {found.where}, dated {found.time}")
        return res



def _signature_problem(g: d.Digest, key: PublicKey | None,
                       retired_by: d.Digest | None) -> str | None:
    """Why ``g`` is not a digest of a trusted key (``key``: the trusted key of its id;
    ``retired_by``: the rotation that retired that key before ``g``), or None."""
    if key is None:
        return f"{g.where} is signed by key {g.key}, which is not a trusted key (another " \
               f"key signed it)"
    if not key.verifies(g.signature, g.message):
        return f"{g.where}: the signature does not match the digest's bytes (edited after " \
               f"signing, or signed by another key)"
    if retired_by is not None:
        return f"{g.where} is signed by key {g.key}, which {retired_by.where} retired " \
               f"(rotated to key {retired_by.body.get('new_key_id')}): a retired key signs " \
               f"nothing after its rotation (forged with a leaked old key, or the old key " \
               f"put back as the signing key)"
    return None


def micros(text: str) -> int:
    try:
        return created_micros(text)
    except StorageError:
        return 0
