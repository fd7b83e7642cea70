"""``audit-collector verify``: check a data directory (the live one, a copy, an
unpacked archive) against its signed digests. Read-only and offline: it needs the
``segments/`` and ``digests/`` directories and the public keys, nothing else.

Order of work: every digest's signature (following key rotations from the trusted
keys), the digest chain (numbers and ``previous`` signatures), then each segment file:
its name against its header, its header's chain link against the segment before, every
record's chain link, its SHA-256 and the prefixes its checkpoints signed; last, the
segments that digests name but that are not there.
"""

from __future__ import annotations

import functools
import itertools
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from collector.storage.errors import CorruptSegmentError, StorageError
from collector.storage.records import created_micros
from collector.storage.regular_files import open_regular
from collector.storage.segments import (
    SegmentFile,
    SegmentHeader,
    file_sizes,
    header_of,
    list_segment_files,
    segment_name,
)

from . import digests as d
from .digest_chain import DigestChain, micros
from .disk_room import waiting_for_room
from .errors import IntegrityError
from .findings import (
    CHAIN_BROKEN,
    DIGEST_MISSING,
    GAP_IN_TIME,
    HASH_MISMATCH,
    RECORD_MISSING,
    RECORD_MODIFIED,
    SEGMENT_MISSING,
    SEGMENT_MOVED,
    SIGNATURE_INVALID,
    FileResult,
    Finding,
    Report,
    Results,
)
from .keys import KeyRing, PublicKey
from .scan import Scan, classify, scan

#: Seconds verify waits, next to a running collector, for the seal of the segment it just
#: rotated away from (written milliseconds after the new segment appears).
SEAL_WAIT: Final = 2.0
#: A running collector's newest digest may be this much older than twice its interval.
LIVE_SLACK_US: Final = 60 * 1_000_000

Progress = Callable[[int, int], None]
#: What reading a damaged segment's header can raise (a damaged gzip member too).
_UNREADABLE: Final = (OSError, StorageError, EOFError, zlib.error)

__all__ = ["FileResult", "Report", "VerifyError", "verify"]


class VerifyError(IntegrityError):
    """Verification cannot start (no data directory, no keys): exit code 2."""


def verify(data_dir: Path, *, public_keys: list[PublicKey] | None = None,
           keys_from: str = "", since_us: int | None = None, until_us: int | None = None,
           progress: Progress | None = None, live: bool = False,
           now_us: int | None = None, anchors: list[str] | None = None) -> Report:
    """Verify ``data_dir``. ``public_keys``: the trusted keys (default: the data
    directory's own key ring). ``since_us``/``until_us``: only segments whose time span
    overlaps this window are re-hashed. ``live``: a collector is running on it (its
    newest digest must then be recent). ``anchors``: digest signatures kept elsewhere,
    each of which must be in the digest chain."""
    data_dir = Path(data_dir)
    if not (data_dir / "segments").is_dir():
        raise VerifyError(f"{data_dir} has no segments/ directory: point verify at a "
                          f"collector data directory (or a copy of one)")
    results = Results()
    if public_keys is None:
        try:
            ring, skipped = KeyRing(data_dir / "keys").read()
        except PermissionError as exc:
            # keys/ is the collector's user's alone (0700): an auditor of the data
            # directory's group reads everything else, and was told only EACCES.
            raise VerifyError(f"cannot read the key ring {data_dir / 'keys'} ({exc.strerror}: "
                              f"it is the collector's user's alone): pass the public keys "
                              f"with --public-key FILE (`audit-collector keys export`, run "
                              f"as the collector's user)") from exc
        if not ring:
            why = "".join(f" {problem}." for problem in skipped)
            raise VerifyError(f"{data_dir / 'keys'} holds no public key: pass the exported "
                              f"keys with --public-key FILE.{why}")
        # Said, not a reason to stop: a digest only the file's key could verify is
        # reported untrusted, and everything else still gets its verdict.
        results.notes.extend(skipped)
        public_keys = list(ring.values())
        keys_from = keys_from or "the data directory's key ring"
    if keys_from == "the data directory's key ring":
        results.notes.append("the public keys come from the data directory itself, which "
                             "proves consistency, not authenticity: verify with "
                             "--public-key FILE (from `keys export`, kept elsewhere)")
    # The segments are listed before the digests are read: next to a running collector
    # a segment listed sealed then has its seal among the digests (a rotation writes the
    # new segment first, then the seal), and a digest naming a segment created since is
    # answered by looking again (``_check_missing``).
    listed = list_segment_files(data_dir / "segments")
    if not listed and not d.list_digest_files(data_dir / d.DIGESTS_DIR) and not anchors:
        # (With an anchor there is a verdict: the anchored digest is not there.)
        raise VerifyError(f"{data_dir} holds no segment and no digest: nothing to verify (a "
                          f"collector signs its store from its first start)")
    chain = DigestChain(data_dir / d.DIGESTS_DIR, public_keys, results, live)
    chain.check()
    segments = _Segments(data_dir / "segments", chain, results, since_us, until_us, progress,
                         live)
    if live:
        segments.room = waiting_for_room(data_dir, time.time())
    selected = segments.check(listed)
    files = results.ordered()
    if selected is not None:
        files = [r for r in files if r.seq in selected or not r.valid]
    good = chain.good
    report = Report(data_dir, files, results.notes,
                    keys_from or f"{len(public_keys)} trusted key(s)", len(good),
                    good[0] if good else None, good[-1] if good else None)
    if live:
        _check_live(report, chain, now_us)
    report.files += [chain.check_anchor(anchor) for anchor in anchors or []]
    return report


class _Segments:
    """Every segment file against the (signature-valid) digests."""

    def __init__(self, segments_dir: Path, chain: DigestChain, results: Results,
                 since_us: int | None, until_us: int | None,
                 progress: Progress | None, live: bool = False) -> None:
        self.segments_dir = segments_dir
        self.chain = chain
        self.results = results
        self.since = since_us
        self.until = until_us
        self.progress = progress
        self.found: set[str] = set()  # segment names present (renamed ones by origin)
        self.unreadable: dict[Path, str] = {}  # listed files that could not be opened: why
        self.live = live  # a collector runs on the directory: it may be sealing a segment
        #: Why that collector may not have written a seal yet (its disk full), or None.
        self.room: str | None = None

    def check(self, listed: list[SegmentFile]) -> set[int] | None:
        """Check them all (``listed``: the segment files, listed before the digests were
        read); the seqs of those in the time window (None: no window)."""
        selected = self._check_files(listed)
        self._check_missing()
        return selected

    # -- segments --------------------------------------------------------------------------
    def _check_files(self, listed: list[SegmentFile]) -> set[int] | None:
        by_segment: dict[str, list[d.Digest]] = {}
        for g in self.chain.good:
            by_segment.setdefault(g.segment, []).append(g)
        files = self._segment_files(listed)
        impostors = self._impostors(files)
        selected = self._select(files, impostors)
        sizes = file_sizes(f.path for f, _ in files if f.path not in impostors
                           and (selected is None or f.seq in selected))
        total = sum(sizes.values())  # one gone since the listing is found so by its scan
        done = 0
        newest = max((f.seq for f, _ in files), default=0)
        # The segment a running collector may be sealing right now (see below).
        just_rotated = max((f.seq for f, _ in files if f.seq < newest), default=-1)
        # The one seal that may wait for room (``room``): the newest segment takes no
        # record until it is written, so with records there, it was written.
        room = self.room if self.room and files and self._interrupted_rotation(
            files[-1][0], by_segment) else None
        prev = _Previous()
        with ThreadPoolExecutor(1, thread_name_prefix="verify-hash") as pool:
            for f, header in files:
                res = self.results.of(f"segments/{f.path.name}", "segment", f.seq)
                if header is None:
                    # Named like a segment (listed as one), but its first line is no
                    # header: damaged, or another file put in its place. It is the
                    # segment its name says, so not "missing" as well.
                    self.found.add(f.path.name.removesuffix(".gz"))
                    res.add(HASH_MISMATCH, self.unreadable.get(
                        f.path, "its first line is not a segment header (damaged, or another "
                        "file put in its place)") + ": its records cannot be checked")
                    prev = _Previous(seq=f.seq)
                    continue
                if f.path in impostors:
                    # No segment of the log: neither checked against the digests nor the
                    # segment the next one links to.
                    res.add(SEGMENT_MOVED, f"says it is segment {f.seq}, as "
                            f"{', '.join(impostors[f.path])} does, and no digest names it: "
                            f"put here beside the segment of that number (forged, or "
                            f"another store's)")
                    continue
                name = self._check_name(f, header, res)
                self.found.add(name)
                ds = by_segment.get(name, [])
                seal = next((g for g in reversed(ds) if g.kind == "seal"), None)
                self._check_links(f, header, ds, prev, res)
                if seal is None and f.seq != newest:
                    # Sealed in the moment between the listing and the digests' reading:
                    # its seal is there now (or, the segment before the newest next to a
                    # running collector, is being signed: a rotation creates the new
                    # segment first and writes the seal a few milliseconds later).
                    seal = self._seal_written_since(
                        name, waiting=self.live and f.seq == just_rotated)
                    if seal is not None:
                        ds = [*ds, seal]
                if seal is None and f.seq != newest:
                    if name in self.chain.unverified:
                        res.add(SIGNATURE_INVALID, "its seal digest does not verify (see its "
                                "digest file)")
                    elif (not self.live and f.seq == just_rotated
                          and self._interrupted_rotation(files[-1][0], by_segment)):
                        res.notes.append("its seal digest is not written: the collector "
                                         "stopped (a crash) between starting the next "
                                         "segment and signing this one; its next start "
                                         "writes the seal")
                    else:
                        res.add(DIGEST_MISSING, "a sealed segment without its seal digest "
                                "(deleted from digests/, or never written)" + (
                                    f"; {room}, written once space is freed on it: "
                                    f"verify again then"
                                    if room and f.seq == just_rotated else ""))
                expected_first = next((g.first_seq for g in ds if g.records), None)
                if expected_first is None and prev.last_seq is not None \
                        and prev.seq == f.seq - 1:
                    expected_first = prev.last_seq + 1
                if selected is not None and f.seq not in selected:
                    prev = _Previous(f.seq, seal.last_chain if seal else None,
                                     seal.last_seq if seal else None)
                    continue
                found = self._scan(f, ds, res, pool, functools.partial(self._report_in, done,
                                                                        total))
                done += sizes.get(f.path, 0)  # as counted: since compressed, deleted, grown
                if found is None:
                    prev = _Previous(seq=f.seq)
                    continue
                self._compare(f, header, ds, seal, found, res, expected_first)
                # What the seal signed is what the next segment links to, whatever became
                # of this one.
                prev = _Previous(f.seq, seal.last_chain if seal else found.last_chain,
                                 seal.last_seq if seal else _last_seq(found))
        self._report(total, total)
        return selected

    def _segment_files(self, files: list[SegmentFile]
                       ) -> list[tuple[SegmentFile, SegmentHeader | None]]:
        """Every segment file with its header, ordered by the seq its header gives (a
        renamed file sits where it belongs), including files in segments/ not named
        like a segment whose header says they are one."""
        names = {f.path.name for f in files}
        out: list[tuple[SegmentFile, SegmentHeader | None]] = []
        for f in files:
            try:
                header: SegmentHeader | None = header_of(f)
            except FileNotFoundError as exc:
                if exc.filename is not None and Path(exc.filename) != f.path:
                    # a link to nowhere: the name stands for no file
                    self.unreadable[f.path] = f"cannot be read: {exc.strerror}"
                    out.append((f, None))
                    continue
                # Next to a running collector: compressed or deleted since the listing.
                packed = SegmentFile(f.seq, f.path.with_name(f.path.name + ".gz"), True)
                if not f.compressed and packed.path.exists():
                    f, header = packed, self._header_or_none(packed)
                else:
                    self._gone(f)
                    continue
            except OSError as exc:  # a link loop, no permission: no verdict on its bytes
                self.unreadable[f.path] = f"cannot be read: {exc.strerror or exc}"
                header = None
            except _UNREADABLE:
                header = None
            out.append((SegmentFile(header.seq if header else f.seq, f.path, f.compressed),
                        header))
        for path in sorted(self.segments_dir.iterdir()):
            if path.name in names or path.name.endswith(".tmp") or not path.is_file():
                continue
            stray = SegmentFile(0, path, path.name.endswith(".gz"))
            try:
                header = header_of(stray)
            except _UNREADABLE:
                continue  # not a segment at all: none of verify's business
            out.append((SegmentFile(header.seq, path, stray.compressed), header))
        return sorted(out, key=lambda e: (e[0].seq, e[0].compressed, e[0].path.name))

    @staticmethod
    def _interrupted_rotation(newest: SegmentFile, by_segment: dict[str, list[d.Digest]]) \
            -> bool:
        """Whether ``newest`` is what a crash in the middle of a rotation leaves: a new
        segment of nothing but its header, not named by any digest. (Its first record
        waits for its predecessor's seal digest: with one record, a missing seal is no
        crash's doing.)"""
        if newest.compressed or by_segment.get(newest.path.name):
            return False
        try:
            with open_regular(newest.path) as f:
                return f.readline(64 * 1024).endswith(b"\n") and not f.read(1)
        except OSError:
            return False

    @staticmethod
    def _header_or_none(f: SegmentFile) -> SegmentHeader | None:
        try:
            return header_of(f)
        except _UNREADABLE:
            return None

    def _gone(self, f: SegmentFile) -> None:
        """A listed segment no longer there: retention's (signed since), or removed."""
        res = self.results.of(f"segments/{f.path.name}", "segment", f.seq)
        if self.chain.retention_since(f.seq):
            res.notes.append("deleted by retention while verify ran")
        else:
            res.add(SEGMENT_MISSING, "removed while verify was reading it")

    def _check_links(self, f: SegmentFile, header: SegmentHeader, ds: list[d.Digest],
                     prev: _Previous, res: FileResult) -> None:
        for g in ds:
            if g.segment_id != header.id:
                res.add(SEGMENT_MOVED, f"{g.where} describes segment {g.segment_id} under "
                        f"this name, the file is segment {header.id}: another segment was "
                        f"put in its place")
                return
            if g.header_chain != header.chain:
                res.add(CHAIN_BROKEN, f"the header's chain link is not the one {g.where} "
                        f"signed")
                return
        if not header.chain:
            res.add(CHAIN_BROKEN, "the header has no chain link: written with chaining off, "
                    "or by another program")
        elif prev.seq == f.seq - 1 and prev.chain is not None and header.chain != prev.chain:
            res.add(CHAIN_BROKEN, f"the header links to chain value {header.chain[:16]}..., "
                    f"but segment {f.seq - 1} ends with {prev.chain[:16]}...")

    def _report_in(self, start: int, total: int, done: int) -> None:
        self._report(start + done, total)

    def _report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)

    def _check_name(self, f: SegmentFile, header: SegmentHeader, res: FileResult) -> str:
        """The name the segment was written under (its digests use it)."""
        original = _written_name(f, header)
        if original != f.name:
            res.add(SEGMENT_MOVED, f"the file is named {f.name}, but its header says it is "
                    f"{original}: renamed or moved")
        return original

    def _impostors(self, files: list[tuple[SegmentFile, SegmentHeader | None]]
                   ) -> dict[Path, list[str]]:
        """The files claiming a seq that a segment of another name claims too, that no
        digest names (as itself or as the new head), with those other names. The
        collector never gives a seq twice; a header-only file planted beside the newest
        segment (which needs no seal) passed, and its creation time ended the segment
        before it early: a window then left that segment out."""
        named = {g.segment for g in self.chain.good} | {g.head for g in self.chain.good}
        names_of: dict[int, set[str]] = {}
        for f, header in files:
            if header is not None:
                names_of.setdefault(f.seq, set()).add(_written_name(f, header))
        impostors: dict[Path, list[str]] = {}
        for f, header in files:
            name = _written_name(f, header)
            others = sorted(names_of.get(f.seq, set()) - {name})
            if header is not None and others and name not in named:
                impostors[f.path] = others
        return impostors

    def _select(self, files: list[tuple[SegmentFile, SegmentHeader | None]],
                impostors: dict[Path, list[str]]) -> set[int] | None:
        """The seqs of the segments written in [since, until); None: all. A segment was
        written from its creation to the next one's, as long as the collector's clock
        went only forward meanwhile; one during which it went back (NTP, a VM restored:
        a digest signed at an earlier time than a reading before it, or the next
        segment created at an earlier time than this one) holds records of times no
        header or digest tells, and is in every window. An impostor (``_impostors``) is
        no segment: its creation ends none."""
        if self.since is None and self.until is None:
            return None
        since = self.since if self.since is not None else -(2**62)
        until = self.until if self.until is not None else 2**62
        starts = [micros(h.created) if h and f.path not in impostors else None
                  for f, h in files]
        during = self._readings_by_head()
        selected = set()
        for i, (f, header) in enumerate(files):
            if f.path in impostors:
                continue
            created = starts[i]
            end = next((s for s in starts[i + 1:] if s is not None), None)
            readings = [r for r in (created, *during.get(_written_name(f, header), []), end)
                        if r is not None]
            start = since if created is None else created
            if _went_back(readings) or (start < until
                                        and (2**62 if end is None else end) > since):
                selected.add(f.seq)
        return selected

    def _readings_by_head(self) -> dict[str, list[int]]:
        """What the collector's clock said at each digest, by the segment active then
        (the digest's ``head``), in the order they were signed: a digest is dated no
        earlier than its predecessor (``clock`` keeps the reading) and a seal is signed
        once the next segment exists, so these are readings taken while that segment
        took records."""
        readings: dict[str, list[int]] = {}
        for g in sorted(self.chain.good, key=lambda g: g.n):
            readings.setdefault(g.head, []).append(micros(g.signed_at))
        return readings

    def _scan(self, f: SegmentFile, ds: list[d.Digest], res: FileResult,
              pool: ThreadPoolExecutor, progress: Callable[[int], None]) -> Scan | None:
        try:
            return scan(f, marks={g.bytes for g in ds}, counts={0} | {g.records for g in ds},
                        progress=progress, hasher_pool=pool)
        except FileNotFoundError:
            # Next to a running collector: compressed meanwhile, or deleted by retention.
            packed = f.path.with_name(f.path.name + ".gz")
            if not f.compressed and packed.exists():
                res.notes.append(f"compressed while verify ran: checked {packed.name}")
                return self._scan(SegmentFile(f.seq, packed, True), ds, res, pool, progress)
            self._gone(f)
        except (CorruptSegmentError, OSError) as exc:
            res.add(HASH_MISMATCH, f"cannot be read to the end: {exc}")
        return None

    def _compare(self, f: SegmentFile, header: SegmentHeader, ds: list[d.Digest],
                 seal: d.Digest | None, found: Scan, res: FileResult,
                 expected_first: int | None) -> None:
        """The file against what its digests signed. Record-level findings (which record,
        what happened) come first; the digest comparisons that merely follow from them
        are left out."""
        res.records, res.size = found.records, found.size
        if found.broken:
            named = classify(f, header, expected_first, seal.last_seq if seal else None)
            for finding in named or [Finding(
                    RECORD_MODIFIED, f"{found.broken} record(s) do not link to the one before")]:
                res.add(finding.reason, finding.detail, count=finding.count)
        explained = bool(res.findings)
        for stop, after in itertools.pairwise(ds):
            # Nothing writes between a clean stop and the next start: a digest after a
            # stop checkpoint covering more signed what was added meanwhile.
            if _is_stop(stop) and after.bytes > stop.bytes and not explained:
                res.add(HASH_MISMATCH, f"{after.where} signed {after.records - stop.records} "
                        f"record(s) ({after.bytes - stop.bytes} bytes) more than {stop.where}, "
                        f"the checkpoint of a clean stop: written while the collector was "
                        f"stopped")
                explained = True
        for g in ds:
            problem = self._against(g, found)
            if problem is not None:
                if not explained:
                    res.add(*problem)
                break
        if seal is not None:
            if found.size > seal.bytes and not explained:
                res.add(HASH_MISMATCH, f"{found.size - seal.bytes} bytes after the end "
                        f"{seal.where} sealed: written to after sealing")
            if found.torn and found.size >= seal.bytes:
                res.add(HASH_MISMATCH, f"{found.torn} bytes of an unterminated line after "
                        f"the end {seal.where} sealed: written to after sealing")
            if seal.body.get("note"):
                res.notes.append(f"{seal.where}: {seal.body['note']}")
            return
        signed = max((g.records for g in ds), default=0)
        newest = ds[-1] if ds else None
        if (found.records > signed and newest is not None and _is_stop(newest)
                and not self._restarted_since(newest)):
            if not explained:
                res.add(HASH_MISMATCH, f"{found.records - signed} record(s) after "
                        f"{newest.where}, the checkpoint of a clean stop: written while the "
                        f"collector was stopped")
        elif found.records > signed:
            res.notes.append(f"{found.records - signed} record(s) after the newest digest "
                             f"are not signed yet (chained; the next checkpoint signs them)")
        if found.torn:
            res.notes.append(f"ends with {found.torn} bytes of an unterminated line (a write "
                             f"in progress, or a crash the next start repairs)")

    def _seal_written_since(self, name: str, *, waiting: bool) -> d.Digest | None:
        deadline = time.monotonic() + (SEAL_WAIT if waiting else 0.0)
        while True:
            seal = self.chain.seal_since(name)
            if seal is not None or time.monotonic() >= deadline:
                return seal
            time.sleep(0.05)

    def _restarted_since(self, stop: d.Digest) -> bool:
        """Whether the collector started again since verify read ``stop`` (a clean stop's
        checkpoint, then the newest digest of its segment): its start checkpoint then
        signs exactly what the stop did, and the records after it are its own."""
        after = [g for g in self.chain.digests_since(stop.segment) if g.n > stop.n]
        return bool(after) and after[0].bytes == stop.bytes

    @staticmethod
    def _against(g: d.Digest, found: Scan) -> tuple[str, str] | None:
        """What in ``found`` contradicts digest ``g``, if anything."""
        if g.bytes > found.size:
            if found.records < g.records:
                cut = f"; {found.torn} bytes of a cut record follow" if found.torn else ""
                return (RECORD_MISSING, (f"{g.where} signed {g.records} records "
                                         f"({g.bytes} bytes); the file has {found.records} "
                                         f"({found.size} bytes{cut}): truncated"))
            return (HASH_MISMATCH, (f"shorter than {g.where} says ({found.size} of "
                                    f"{g.bytes} bytes)"))
        if found.sha256_at.get(g.bytes) != g.sha256:
            return (HASH_MISMATCH, (f"the first {g.bytes} bytes do not have the SHA-256 "
                                    f"{g.where} signed"))
        if found.chain_at.get(g.records) != g.last_chain:
            return (HASH_MISMATCH, (f"record {g.records} does not end the chain {g.where} "
                                    f"signed (records re-chained)"))
        return None

    def _check_missing(self) -> None:
        named: dict[str, d.Digest] = {}
        for g in self.chain.good:
            named.setdefault(g.segment, g)
            named.setdefault(g.head, g)
        for name, g in sorted(named.items()):
            seq = _seq_of(name)
            if name in self.found or seq is None or seq < self.chain.deleted_below:
                continue
            res = self.results.of(f"segments/{name}", "segment", seq)
            if self._appeared(name):
                res.notes.append("created while verify ran (after it listed the segments)")
                continue
            if self.chain.retention_since(seq):
                res.notes.append("deleted by retention while verify ran")
                continue
            role = " as the new active segment" if g.segment != name else ""
            res.add(SEGMENT_MISSING, f"{g.where} names it{role}, but it is not in segments/ "
                    f"(deleted, or moved away)")
        seqs = sorted({r.seq for r in self.results.by_path.values() if r.kind == "segment"})
        if seqs and self.chain.deleted_below and seqs[0] > self.chain.deleted_below:
            # Retention deleted the segments below deleted_below and no more: the ones
            # from there to the oldest present were removed otherwise.
            self._missing_range(self.chain.deleted_below, seqs[0] - 1,
                                f"retention deleted the segments below "
                                f"{self.chain.deleted_below} only, and the oldest here is "
                                f"{seqs[0]}")
        for a, b in itertools.pairwise(seqs):
            low = max(a + 1, self.chain.deleted_below)
            if low < b:
                self._missing_range(low, b - 1, f"between segments {a} and {b}")

    def _appeared(self, name: str) -> bool:
        """Whether segment ``name`` is there now, plain or compressed."""
        path = self.segments_dir / name
        return path.exists() or path.with_name(name + ".gz").exists()

    def _missing_range(self, low: int, high: int, where: str) -> None:
        """One finding for a run of missing segments, however long (a header claiming a
        seq of 10**18 must not make a finding per number)."""
        name = f"segments/segment-{low:08d}-*.jsonl"
        if high > low:
            name += f" .. segment-{high:08d}-*.jsonl"
        what = f"segment {low} is" if high == low else f"segments {low}-{high} are"
        self.results.of(name, "segment", low).add(SEGMENT_MISSING, f"{what} missing ({where})")

    # -- anchors -----------------------------------------------------------------------------
def _check_live(report: Report, chain: DigestChain, now_us: int | None) -> None:
    """A running collector signs new records within its digest interval: an unsigned
    tail older than that means its newest digests were removed."""
    newest = report.newest_digest
    if newest is None:
        return
    now = now_us if now_us is not None else time.time_ns() // 1000
    # By the collector's clock, not the digest's date: after that clock stepped back,
    # digests carry the date of the one before the step, ahead of the clock, and the
    # tail looked that much younger (a step back of a day hid removed digests a day).
    age = now - micros(newest.signed_at)
    allowed = 2 * newest.interval_ms * 1000 + LIVE_SLACK_US
    unsigned = any("not signed yet" in note for r in report.files if r.kind == "segment"
                   for note in r.notes)
    if unsigned and age > allowed:
        chain.result_of(newest).add(
            GAP_IN_TIME, f"a collector is running on this directory, yet its newest digest "
            f"({newest.where}, signed at {newest.signed_at}) is {age / 1e6:.0f} s old while "
            f"records wait unsigned: the digests written since were removed")


@dataclass(frozen=True)
class _Previous:
    """The segment before the one being checked: its seq, the chain value it ends with
    and its last record's seq (as far as known)."""

    seq: int | None = None
    chain: str | None = None
    last_seq: int | None = None


def _written_name(f: SegmentFile, header: SegmentHeader | None) -> str:
    """The name segment file ``f`` was written under (its digests use it): its header's
    seq and creation time; its own name when the header gives none."""
    if header is None:
        return f.name
    try:
        return segment_name(header.seq, created_micros(header.created) * 1000)
    except StorageError:
        return f.name


def _went_back(readings: list[int]) -> bool:
    """Whether a clock read in this order went back between two readings."""
    return any(b < a for a, b in itertools.pairwise(readings))


def _is_stop(g: d.Digest) -> bool:
    return bool(g.kind == "checkpoint" and g.body.get("why") == "stop")


def _seq_of(name: str) -> int | None:
    parts = name.split("-")
    return int(parts[1]) if len(parts) > 2 and parts[1].isascii() and parts[1].isdigit() else None


def _last_seq(found: Scan) -> int | None:
    line = found.line_at.get(found.records)
    if not line:
        return None
    try:
        seq = orjson.loads(line).get("seq")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return seq if type(seq) is int else None
