"""The store's clock for ages: rotation by age and retention by age.

The wall clock does not measure elapsed time: NTP steps it, a VM restored from a
snapshot or resumed runs on a stale one until corrected, anyone with root sets it. Ages
taken from it alone went wrong both ways: a clock stepped forward a year made retention
by age delete every sealed segment in one pass (the whole audit history, signed as
retention, so verify called it clean); a clock stepped back kept the active segment
from rotating by age until the wall clock had caught up again (an hour back: a
two-hour segment; a year back: none for a year).

So ages also count time the collector saw pass, on a clock that is never stepped
(``CLOCK_BOOTTIME``: it counts a suspend too, which ``CLOCK_MONOTONIC`` leaves out):

- a segment is due for rotation once it is ``max_segment_age`` old by either clock;
- retention takes "now" as the earlier of the wall clock and the trusted time of the
  store's opening advanced by the time elapsed since: a forward step is not believed
  (retention then keeps more than it must, never less); a backward step is (retention
  then also keeps more).

The trusted time outlives the process (``clock_anchor``): taken from the wall clock at
each start, a forward step was believed as soon as the collector restarted (a crash, a
deploy, a crash loop), and that first retention pass deleted the whole history. Now a
start in the same boot takes the earlier of the wall clock and the last anchor advanced
by the elapsed clock. A reboot (the elapsed clock starts again), a missing or garbled
anchor, no boot id to tell this boot's anchor by (logged), or an operator who deletes it
(the way out when the clock had been behind and was set right) start from the wall
clock: a clock wrong then is believed, as nothing here can tell it from the downtime.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Final

from . import clock_anchor

log = logging.getLogger("collector.store")

_ELAPSED_CLOCK: Final = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
#: A wall clock this far ahead of the elapsed time is said in the log (NTP slews both
#: clocks alike; only a step, or a suspend on a system without CLOCK_BOOTTIME, parts them).
AHEAD_SAID_NS: Final = 60 * 1_000_000_000
#: How often (elapsed time) the housekeeping writes the anchor again: not needed for a
#: restart to count right (any anchor of this boot does, advanced by the elapsed clock),
#: it keeps one on disk if it was deleted or failed to be written, at a cost of nothing.
ANCHOR_EVERY_NS: Final = 60 * 1_000_000_000


def elapsed_ns() -> int:
    """Nanoseconds on a clock that only moves forward with time (tests replace it)."""
    return time.clock_gettime_ns(_ELAPSED_CLOCK)


class StoreClock:
    def __init__(self, data_dir: Path) -> None:
        self._anchor_path = data_dir / clock_anchor.NAME
        self._boot_id = clock_anchor.boot_id()
        self._said_ahead = 0  # the lead of the wall clock last said in the log
        self._save_failing = False
        self._opened_elapsed = elapsed_ns()
        self._opened_wall = self._opening_time(time.time_ns())
        self._saved_at = self._opened_elapsed
        self.save()

    def _opening_time(self, wall: int) -> int:
        """The trusted time at the opening: the wall clock, or earlier if this boot's
        anchor, advanced by the time elapsed since it was written, says so."""
        anchor = clock_anchor.load(self._anchor_path)
        if anchor is None or self._boot_id is None:
            return wall
        if anchor.boot_id != self._boot_id:
            log.info("audit store: the clock anchor is from an earlier boot: ages count "
                     "from the wall clock")
            return wall
        since = self._opened_elapsed - anchor.elapsed_ns
        if since < 0:  # the elapsed clock never goes back within a boot
            clock_anchor.unusable(self._anchor_path, "its elapsed time is later than now")
            return wall
        trusted = anchor.wall_ns + since
        if wall - trusted > AHEAD_SAID_NS:
            self._said_ahead = wall - trusted
            log.warning("audit store: the wall clock is %.0f s ahead of the time its last "
                        "run's clock anchor says, advanced by the time elapsed since in "
                        "this boot (a clock step while the collector ran or was stopped, "
                        "a VM resumed): retention by age keeps counting elapsed time, not "
                        "the step, and deletes nothing early; %s",
                        self._said_ahead / 1e9, self._way_out())
        return min(wall, trusted)

    def _way_out(self) -> str:
        return (f"if the clock had been behind and is right now, stop the collector, "
                f"delete {self._anchor_path} and start it: ages then count from the wall "
                f"clock (as after a reboot)")

    def _now(self) -> tuple[int, int, int]:
        """The wall clock, the trusted time (the earlier of the two: see the module's
        doc) and the elapsed clock, read now."""
        wall, elapsed = time.time_ns(), elapsed_ns()
        return wall, min(wall, self._opened_wall + elapsed - self._opened_elapsed), elapsed

    def retention_now_ns(self) -> int:
        """The time retention measures ages against (see the module's doc)."""
        wall, trusted, _ = self._now()
        ahead = wall - trusted
        if ahead > AHEAD_SAID_NS and abs(ahead - self._said_ahead) > AHEAD_SAID_NS:
            self._said_ahead = ahead
            log.warning("audit store: the wall clock moved %.0f s further forward than "
                        "time has passed since the store opened (a clock step, a VM "
                        "resumed): retention by age keeps counting elapsed time, not "
                        "the step, and deletes nothing early, %s",
                        ahead / 1e9, self._after_a_restart())
        return trusted

    def _after_a_restart(self) -> str:
        """What a restart in this boot does with the step (the warning's end)."""
        if self._boot_id is None:  # no anchor is kept (said at the opening)
            return ("until the collector restarts: without this boot's id it keeps no "
                    "clock anchor, and a restart believes the wall clock")
        return f"after a restart too; {self._way_out()}"

    def save_if_due(self) -> None:
        """Write the anchor again if ``ANCHOR_EVERY_NS`` has passed (the housekeeping's)."""
        if elapsed_ns() - self._saved_at >= ANCHOR_EVERY_NS:
            self.save()

    def save(self) -> None:
        """Write the anchor: the trusted time (never the raw wall clock: a step it holds
        would be believed at the next start), the elapsed clock, the boot. A failure is
        logged, never raised: the previous anchor, if any, still counts right."""
        if self._boot_id is None:
            return  # without a boot id, a restart could not tell this boot's anchor
        _, trusted, elapsed = self._now()
        self._saved_at = elapsed  # a failure too: tried again at the cadence, not each pass
        try:
            clock_anchor.save(self._anchor_path,
                              clock_anchor.Anchor(trusted, elapsed, self._boot_id))
        except OSError as exc:
            if not self._save_failing:
                log.warning("audit store: cannot write the clock anchor %s (%s); tried "
                            "again every %d s: until then a restart in this boot counts "
                            "ages from the previous anchor, or from the wall clock if "
                            "there is none", self._anchor_path, exc,
                            ANCHOR_EVERY_NS // 1_000_000_000)
            self._save_failing = True
            return
        if self._save_failing:
            log.info("audit store: the clock anchor %s is written again", self._anchor_path)
        self._save_failing = False
