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
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import orjson

from collector.storage.errors import CorruptSegmentError
from collector.storage.in_the_way import (
    DIGESTS,
    DIGESTS_THEN,
    SEGMENTS,
    SEGMENTS_THEN,
    refuse_other_than_a_dir,
)
from collector.storage.regular_files import open_regular
from collector.storage.segments import (
    SegmentFile,
    file_sizes,
    list_segment_files,
)

from . import digests as d
from .digest_chain import DigestChain, micros
from .disk_room import waiting_for_room
from .errors import IntegrityError
from .findings import (
    DIGEST_MISSING,
    GAP_IN_TIME,
    HASH_MISMATCH,
    SEGMENT_MOVED,
    SIGNATURE_INVALID,
    FileResult,
    Report,
    Results,
)
from .keys import KeyRing, PublicKey
from .missing_segments import _MissingSegments
from .scan import Scan, scan
from .segment_compare import _Comparing, _Previous
from .segment_listing import _Listing

#: Seconds verify waits, next to a running collector, for the seal of the segment it just
#: rotated away from (written milliseconds after the new segment appears).
SEAL_WAIT: Final = 2.0
#: A running collector's newest digest may be this much older than twice its interval.
LIVE_SLACK_US: Final = 60 * 1_000_000

Progress = Callable[[int, int], None]
#: What reading a damaged segment's header can raise (a damaged gzip member too).
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
    # Something else in place of either: what it is and what to do, not "no segments/
    # directory" or "nothing here was ever signed".
    refuse_other_than_a_dir(data_dir / "segments", SEGMENTS, SEGMENTS_THEN)
    refuse_other_than_a_dir(data_dir / d.DIGESTS_DIR, DIGESTS, DIGESTS_THEN)
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


class _Segments(_Listing, _Comparing, _MissingSegments):
    """Every segment file against the (signature-valid) digests. Its parts, inherited:
    listing and selecting the files (``segment_listing``), one file against its digests
    (``segment_compare``), the segments not there (``missing_segments``)."""

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

    def _report_in(self, start: int, total: int, done: int) -> None:
        self._report(start + done, total)

    def _report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)

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

    def _seal_written_since(self, name: str, *, waiting: bool) -> d.Digest | None:
        deadline = time.monotonic() + (SEAL_WAIT if waiting else 0.0)
        while True:
            seal = self.chain.seal_since(name)
            if seal is not None or time.monotonic() >= deadline:
                return seal
            time.sleep(0.05)

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


def _last_seq(found: Scan) -> int | None:
    line = found.line_at.get(found.records)
    if not line:
        return None
    try:
        seq = orjson.loads(line).get("seq")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return seq if type(seq) is int else None
