"""The segment files verify checks (a part of its segment walk, ``verify._Segments``,
which inherits it): every file of ``segments/`` with its header, in the order of the seqs
the headers give; the files claiming a seq they do not hold; those a time window selects;
and a listed file gone since.
"""

from __future__ import annotations

import itertools
import zlib
from pathlib import Path
from typing import Final

from collector.storage.errors import StorageError
from collector.storage.records import created_micros
from collector.storage.segments import SegmentFile, SegmentHeader, header_of, segment_name

from .digest_chain import DigestChain, micros
from .findings import SEGMENT_MISSING, Results

#: What reading a damaged segment's header can raise (a damaged gzip member too).
_UNREADABLE: Final = (OSError, StorageError, EOFError, zlib.error)


class _Listing:
    """Listing the segment files and selecting them (see this module's doc)."""

    #: Set in ``_Segments.__init__``.
    segments_dir: Path
    chain: DigestChain
    results: Results
    since: int | None
    until: int | None
    unreadable: dict[Path, str]

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
