"""Which sealed segments retention deletes: a pure decision, acted on by the store.

A sealed segment's age is the time it was sealed, which is when the next segment was
created (its header's ``created``): every record in it is at least that old.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SealedInfo:
    seq: int
    size: int  # bytes on disk (compressed size for a compressed segment)
    sealed_ns: int  # creation time of the next segment


def expired(
    sealed: Sequence[SealedInfo],
    *,
    now_ns: int,
    retention_days: float,
    retention_bytes: int | None,
    keep_newest: bool,
) -> list[int]:
    """Seqs of the sealed segments to delete, oldest first.

    ``keep_newest``: keep the newest sealed segment whatever its age or size. The store
    passes it while the active segment holds no record yet, because the newest record
    in the store is where the collector-wide sequence continues from after a restart.
    """
    candidates = sorted(sealed, key=lambda s: s.seq)
    if keep_newest and candidates:
        candidates = candidates[:-1]
    max_age_ns = retention_days * 86_400 * 1_000_000_000
    doomed = [s.seq for s in candidates if now_ns - s.sealed_ns > max_age_ns]
    if retention_bytes is not None:
        kept = [s for s in sorted(sealed, key=lambda s: s.seq) if s.seq not in doomed]
        total = sum(s.size for s in kept)
        for s in candidates:
            if total <= retention_bytes:
                break
            if s.seq not in doomed:
                doomed.append(s.seq)
                total -= s.size
    return sorted(doomed)
