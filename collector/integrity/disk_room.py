"""Whether a running collector may be waiting for disk room to write its digests, as
``verify`` (another process, which takes no lock) can tell: from the collector's live
stats file, or, when that file goes unwritten, from the disk itself.

A seal digest the disk refuses waits in the collector's memory, and the new segment
takes no record until it is written (docs/integrity.md, "Failures"). Verify cannot tell
that digest from a deleted one, and must not: it stays ``digest missing``. But said
alone, an operator checking a store on a full disk read tampering; this says why the
digest may not be there yet, and what ends it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from collector.storage.disk_space import BATCH_ROOM, known_free_bytes
from collector.storage.failures import DISK_FULL
from collector.storage.regular_files import read_regular

#: The live stats file counts as stale (no longer what the collector does now) past this
#: many of its writes' intervals, as ``audit-collector stats`` judges it.
STALE_AFTER = 3


def waiting_for_room(data_dir: Path, now: float) -> str | None:
    """Why a collector running on ``data_dir`` may not have written a digest yet (its
    disk full), as a phrase for verify's finding; None when nothing says so. ``now``:
    ``time.time()``. The stats file says ``disk_full`` (its store's ``refusal``) while
    it is written; on a disk full to the last byte it cannot be (its writes fail), so a
    stats file left unwritten beside a disk with less than a batch's room free says so
    too."""
    # Here, not at the top: that module brings in ingest and asyncio, which verify of a
    # copy never needs.
    from collector.stats_file import MAX_STATS_BYTES, STATS_FILE, STATS_INTERVAL

    stats, age = _read_stats(data_dir / STATS_FILE, now, MAX_STATS_BYTES)
    fresh = age is not None and age <= STALE_AFTER * STATS_INTERVAL
    if fresh and isinstance(stats, dict) and stats.get("state") == "running":
        store = stats.get("store")
        if isinstance(store, dict) and store.get("refusal") == DISK_FULL:
            return (f"the running collector reports its disk full ({STATS_FILE}, "
                    f"{age:g} s ago): it may be waiting for room to write this digest")
        return None  # a fresh, running collector's word on its own disk
    free = known_free_bytes(data_dir / "digests")
    if free is not None and free < BATCH_ROOM:
        return (f"the running collector's disk has {free:,} bytes free (its {STATS_FILE} "
                f"unwritten): it may be waiting for room to write this digest")
    return None


def _read_stats(path: Path, now: float, limit: int) -> tuple[Any, float | None]:
    """The stats file's contents and age in seconds; (None, None) when there is none
    to read (never written, unreadable, half a file, no regular file or larger than
    ``limit``: nothing to say from it)."""
    try:
        # A regular file only, as `stats` reads it: a FIFO in its place held every live
        # verify in its open for good, and /dev/zero filled its memory.
        data = read_regular(path, limit)
        age = now - path.stat().st_mtime
        return orjson.loads(data), round(age, 1)
    except (OSError, orjson.JSONDecodeError):
        return None, None
