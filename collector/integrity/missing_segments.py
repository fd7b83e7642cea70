"""The segments verify did not find (a part of its segment walk, ``verify._Segments``,
which inherits it): those a digest names, and the gaps in the seqs of those present,
each told from one created or deleted by retention while verify ran.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from . import digests as d
from .digest_chain import DigestChain
from .findings import SEGMENT_MISSING, Results


class _MissingSegments:
    """The segments that are not there (see this module's doc)."""

    #: Set in ``_Segments.__init__`` (``found``: by its walk over the files).
    segments_dir: Path
    chain: DigestChain
    results: Results
    found: set[str]

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


def _seq_of(name: str) -> int | None:
    parts = name.split("-")
    return int(parts[1]) if len(parts) > 2 and parts[1].isascii() and parts[1].isdigit() else None
