"""``python -m collector`` on a wall clock stepped by ``STEPPED_CLOCK_SECONDS`` (NTP or
root stepped it; libfaketime is not available): ``time.time`` and ``time.time_ns`` are
moved, the elapsed-time clock (``CLOCK_BOOTTIME``) is not, as with a real step."""

from __future__ import annotations

import os
import time

from collector.cli import main

STEP_NS = int(os.environ.get("STEPPED_CLOCK_SECONDS", "0")) * 1_000_000_000
_time_ns, _time = time.time_ns, time.time
time.time_ns = lambda: _time_ns() + STEP_NS
time.time = lambda: _time() + STEP_NS / 1e9
raise SystemExit(main())
