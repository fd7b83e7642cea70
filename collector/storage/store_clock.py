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
- retention takes "now" as the earlier of the wall clock and the wall clock of the
  store's opening advanced by the time elapsed since: a forward step is not believed
  until the collector restarts (retention then keeps more than it must, never less);
  a backward step is (retention then also keeps more). A clock already wrong when the
  collector starts is believed: nothing here can tell it from the downtime.
"""

from __future__ import annotations

import logging
import time
from typing import Final

log = logging.getLogger("collector.store")

_ELAPSED_CLOCK: Final = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
#: A wall clock this far ahead of the elapsed time is said in the log (NTP slews both
#: clocks alike; only a step, or a suspend on a system without CLOCK_BOOTTIME, parts them).
AHEAD_SAID_NS: Final = 60 * 1_000_000_000


def elapsed_ns() -> int:
    """Nanoseconds on a clock that only moves forward with time (tests replace it)."""
    return time.clock_gettime_ns(_ELAPSED_CLOCK)


class StoreClock:
    def __init__(self) -> None:
        self._opened_wall = time.time_ns()
        self._opened_elapsed = elapsed_ns()
        self._said_ahead = 0  # the lead of the wall clock last said in the log

    def retention_now_ns(self) -> int:
        """The time retention measures ages against (see the module's doc)."""
        wall = time.time_ns()
        steady = self._opened_wall + elapsed_ns() - self._opened_elapsed
        ahead = wall - steady
        if ahead > AHEAD_SAID_NS and abs(ahead - self._said_ahead) > AHEAD_SAID_NS:
            self._said_ahead = ahead
            log.warning("audit store: the wall clock moved %.0f s further forward than "
                        "time has passed since the store opened (a clock step, a VM "
                        "resumed): retention by age keeps counting elapsed time, not "
                        "the step, and deletes nothing early; once the clock is right, "
                        "restart the collector to count ages from it", ahead / 1e9)
        return min(wall, steady)
