"""One segment file against its digests (a part of verify's segment walk,
``verify._Segments``, which inherits it): its name and header against what they signed and
against the segment before, then its bytes, as scanned, against every digest of it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from collector.storage.segments import SegmentFile, SegmentHeader

from . import digests as d
from .digest_chain import DigestChain
from .findings import (
    CHAIN_BROKEN,
    HASH_MISMATCH,
    RECORD_MISSING,
    RECORD_MODIFIED,
    SEGMENT_MOVED,
    FileResult,
    Finding,
)
from .scan import Scan, classify
from .segment_listing import _written_name


class _Comparing:
    """A segment file against its digests (see this module's doc)."""

    #: Set in ``_Segments.__init__``.
    chain: DigestChain

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

    def _check_name(self, f: SegmentFile, header: SegmentHeader, res: FileResult) -> str:
        """The name the segment was written under (its digests use it)."""
        original = _written_name(f, header)
        if original != f.name:
            res.add(SEGMENT_MOVED, f"the file is named {f.name}, but its header says it is "
                    f"{original}: renamed or moved")
        return original

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


@dataclass(frozen=True)
class _Previous:
    """The segment before the one being checked: its seq, the chain value it ends with
    and its last record's seq (as far as known)."""

    seq: int | None = None
    chain: str | None = None
    last_seq: int | None = None


def _is_stop(g: d.Digest) -> bool:
    return bool(g.kind == "checkpoint" and g.body.get("why") == "stop")
