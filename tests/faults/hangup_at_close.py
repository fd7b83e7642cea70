"""``python -m collector`` whose store sends its own process a SIGHUP as it starts to
close: a terminal closed while the collector stops, at the one moment a test cannot
aim a signal at from outside (after the event loop, before the exit)."""

from __future__ import annotations

import os
import signal

from collector.cli import main
from collector.store import Store

close = Store.close


def close_hung_up(self: Store) -> None:
    os.kill(os.getpid(), signal.SIGHUP)
    close(self)


Store.close = close_hung_up  # type: ignore[method-assign]
raise SystemExit(main())
