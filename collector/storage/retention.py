"""Which sealed segments retention deletes: a pure decision, acted on by the store.

A sealed segment's age is the time it was sealed, which is when the next segment was
created (its header's ``created``): every record in it is at least that old, and at
least as old as any later segment (records arrive in seq order). Seal times come from
the wall clock, which may have been wrong when they were taken: see ``seal_times``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SealedInfo:
    seq: int
    size: int  # bytes it counts for (see SegmentSet: 0 while its compressed copy is made)
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
    sealed_ns = seal_times(candidates, now_ns)
    if keep_newest and candidates:
        candidates = candidates[:-1]
    max_age_ns = retention_days * 86_400 * 1_000_000_000
    doomed = [s.seq for s in candidates if now_ns - sealed_ns[s.seq] > max_age_ns]
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


def seal_times(sealed: Sequence[SealedInfo], now_ns: int) -> dict[int, int]:
    """The seal time retention takes for each segment (by seq), and says is gone with it.

    Never earlier than that of a segment before it: deletion by age is a prefix (sealed
    by a clock that ran ahead and was set back, segment 5 read younger than 6 and 7,
    and retention deleted 6 and 7 around it, a hole under a digest saying all below 8
    went). Never earlier than its own either, unless its own is after ``now_ns``: only
    that is known to be wrong, and it becomes the earliest seal time at or after it.
    Taking the earliest at or after for every segment let one seal time taken while the
    clock was behind (stepped back, then corrected) drag every older segment into
    deletion however young: a year behind deleted the whole history before it, the very
    failure ``store_clock`` keeps a forward step from causing."""
    candidates = sorted(sealed, key=lambda s: s.seq)
    earliest_after: dict[int, int] = {}
    floor: int | None = None
    for s in reversed(candidates):
        floor = s.sealed_ns if floor is None else min(floor, s.sealed_ns)
        earliest_after[s.seq] = floor
    taken: dict[int, int] = {}
    latest: int | None = None
    for s in candidates:
        own = earliest_after[s.seq] if s.sealed_ns > now_ns else s.sealed_ns
        latest = own if latest is None else max(latest, own)
        taken[s.seq] = latest
    return taken
