"""``serve``'s live stats file (``ingest-stats.json``): ingest's, the store's and the
integrations' counters, written every ``STATS_INTERVAL`` seconds off the event loop for
the read commands (``stats``, ``read_stats.py``), which run in another process, and once
more at the stop with ``state`` "stopped" (or "failed": the stop or the start-up raised).
Its writes that fail are warned of once, then every ``STATS_REMINDER``, and their
recovery said once (``StatsFile``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

from audit_middleware._counter import worth_saying

from .config import CollectorConfig
from .ingest import IngestServer
from .integrations import Integrations
from .metrics import SHARED_WAIT
from .single_flight import SingleFlight, Unanswered
from .storage.disk_space import is_full
from .storage.segments import FILE_MODE

log = logging.getLogger("collector")  # serve's logger: the same lines as before the move

STATS_FILE = "ingest-stats.json"
STATS_INTERVAL = 5.0
#: Far more than a collector's stats hold (a few KiB; at most 1,000 sources reported,
#: their ranges folded): a larger file is not one it wrote (a link to /dev/zero never
#: ends), and read whole it could fill memory. Its readers: ``stats``, ``verify``.
MAX_STATS_BYTES = 64 << 20
#: Seconds between the reminders that the stats file still cannot be written.
STATS_REMINDER = 3600.0


async def _write_stats(server: IngestServer, store_stats: SingleFlight[dict[str, Any]],
                       config: CollectorConfig, integrations: Integrations,
                       stats_file: StatsFile | None = None) -> None:
    # The read commands (stats) run in another process: they find the live counters here.
    if stats_file is None:
        stats_file = StatsFile(config.data_dir / STATS_FILE)
    failures = unanswered = 0
    while True:
        await asyncio.sleep(STATS_INTERVAL)
        try:
            # The store's stats cost O(sources) (every app process is one) and read its
            # disk: off the loop, shared with /metrics (one thread at a time however
            # long a hung disk holds it); this beat is skipped when they do not come.
            live = _live_stats(server, await store_stats.read(SHARED_WAIT), integrations)
            # Off the loop too: on a hung disk (a frozen network file system) the file's
            # open hangs, and on the loop it held ingest and GET /healthz with it (a
            # probe timed out instead of hearing write_stalled). One write at a time,
            # waited for a bounded time (``StatsFile.write_off_loop``).
            await stats_file.write_off_loop(live, SHARED_WAIT)
        except Unanswered as exc:  # no traceback: the disk, not this code
            unanswered += 1
            if worth_saying(unanswered):
                log.warning("%s: %s not written this time (%d times so far)", exc,
                            STATS_FILE, unanswered)
        except Exception:  # the live stats go on: a task that dies leaves them frozen
            failures += 1
            if worth_saying(failures):
                log.exception("writing %s failed (%d times so far)", STATS_FILE, failures)


async def _final_stats(server: IngestServer, integrations: Integrations,
                       stats_file: StatsFile, clean: bool = True) -> None:
    """The live stats file once more, as the stop leaves them: read and written as the
    stats task does (off the loop, each waited for ``SHARED_WAIT`` at most). On the loop,
    a hung disk held the stop there for good: the process never exited. ``state`` is
    "stopped" after a ``clean`` stop, else "failed" (a stop or a start-up that raised:
    told a clean stop by ``stats``, an operator looked no further)."""
    try:
        store_stats = await integrations.store_stats.read(SHARED_WAIT, fresh=True)
        # Fresh: a write under way (the stats task's, cancelled, goes on in its thread)
        # holds the counters of before the stop; shared, the file kept those.
        await stats_file.write_off_loop(
            {**_live_stats(server, store_stats, integrations),
             "state": "stopped" if clean else "failed"},
            SHARED_WAIT, fresh=True)
    except Unanswered as exc:  # no traceback: the disk, not this code
        log.warning("%s: the final %s not written (`audit-collector stats` shows an "
                    "earlier write's counters)", exc, STATS_FILE)


def _live_stats(server: IngestServer, store_stats: dict[str, Any],
                integrations: Integrations) -> dict[str, Any]:
    """What the live stats file holds; read on the loop (ingest's counters live there).
    ``state`` is "running"; the stop's last write says "stopped", or "failed" (``stats``
    tells a clean stop from a failed one and from a collector that died, whose last
    write says "running")."""
    return {"state": "running", **server.stats(), "store": store_stats,  # ingest's, the store's
            **integrations.stats()}  # http ingest, forwarder (lag)


class StatsFile:
    """The live counters' file, replaced whole at each write. A write that fails (a full
    disk, most often) is warned of once, when the writes start failing (or fail for
    another reason: another errno, another fix), again at most
    every ``STATS_REMINDER`` while they fail, and said once (info) when one succeeds
    again: it was warned of at every write, every ``STATS_INTERVAL``, for as long as the
    disk stayed full. Nothing else depends on it: the store and ingest go on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._failures = 0  # writes failed in a row
        self._warned = 0.0  # time.monotonic() of the last warning
        self._warned_of: int | None = None  # the errno it said
        self._latest: dict[str, Any] = {}
        self._writing = SingleFlight(self._write_latest, f"the live stats file ({path.name})")

    async def write_off_loop(self, live: dict[str, Any], timeout: float, *,
                             fresh: bool = False) -> bool:
        """``write`` on a thread of its own, one write at a time; ``Unanswered`` after
        ``timeout`` seconds. A write still under way (a hung disk) is waited for instead
        of starting another: in the loop's default pool, each held one of its few
        threads, and a stop's ``asyncio.to_thread`` waited for the disk with them. The
        next write after it writes the latest counters. ``fresh``: ``live`` itself is
        written (the one under way, of older counters, is waited for first, within the
        same ``timeout``): the stop's last write."""
        self._latest = live
        return await self._writing.read(timeout, fresh=fresh)

    def _write_latest(self) -> bool:
        return self.write(self._latest)

    def write(self, live: dict[str, Any]) -> bool:
        """Write ``live``; False (logged as above) if it could not be written."""
        tmp = self.path.with_suffix(".tmp")
        try:
            # The store's file mode, whatever the umask (write_bytes gave 0666 under umask 0).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps(live, option=orjson.OPT_SORT_KEYS))
            os.chmod(tmp, FILE_MODE)  # a .tmp left over from before keeps its old mode
            tmp.replace(self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):  # what it holds of a full disk, given back
                tmp.unlink(missing_ok=True)
            self._failed(exc)
            return False
        if self._failures:
            log.info("wrote %s again after %d failed write(s): `audit-collector stats` "
                     "shows the live counters again", self.path, self._failures)
            self._failures = 0
        return True

    def _failed(self, exc: OSError) -> None:
        self._failures += 1
        now = time.monotonic()
        # Another reason is said at once: its fix is another (the one said would be
        # wrong until the reminder, up to an hour).
        if (self._failures > 1 and now - self._warned < STATS_REMINDER
                and exc.errno == self._warned_of):
            return
        self._warned, self._warned_of = now, exc.errno
        if is_full(exc):
            fix = "free space on that disk"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = f"make {self.path.parent} writable by the collector's user"
        else:  # EIO, a directory gone: the message says what; no fix we can name
            fix = f"check {self.path.parent} and the disk it is on"
        log.warning("could not write %s: %s (%d failed write(s) in a row). `audit-collector "
                    "stats` shows the counters of its last write until it can: %s (the "
                    "store and ingest do not depend on it). Tried again every %g s, said "
                    "again every %g min while it fails, and once when it is written again",
                    self.path, exc, self._failures, fix, STATS_INTERVAL, STATS_REMINDER / 60)
