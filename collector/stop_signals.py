"""What ``serve`` does on SIGTERM, SIGINT and SIGHUP, from the first line of its start-up
to its last (docs/protocol.md, "Shutdown").

- The first SIGTERM or SIGINT asks for a clean stop: what is under way finishes (the
  store's open and repair at start-up, the drain while serving), the store closes,
  exit 0.
- A second one stops at once, without waiting for the drain (Ctrl-C twice, a stop
  repeated): the process ends by that signal, as a SIGKILL would end it. Nothing
  acknowledged is lost: a batch is acknowledged only once it is fsynced, and the next
  start repairs what the stop left (a batch written but not yet acknowledged is sent
  again by its app, and stored once).
- SIGHUP (a closed terminal, ``systemctl reload``) never ends the collector: while
  serving it reloads the TLS certificates, otherwise it is said and ignored.

Handlers were the event loop's only: before it ran, SIGTERM's default action ended a
start-up mid-repair and SIGINT raised KeyboardInterrupt there; after it, during the
store's close, likewise, and SIGHUP's default action ended the process; while it ran, a
second stop signal did nothing and the stop waited out the drain.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

STOPS = (signal.SIGTERM, signal.SIGINT)
HANDLED = (*STOPS, signal.SIGHUP)


def _say(text: str) -> None:
    """A line on stderr, written straight to the file descriptor: a signal handler runs
    between any two bytecodes of the main thread, perhaps in the middle of a print() to
    the same stream (whose buffer would refuse a reentrant write)."""
    try:
        os.write(2, f"audit-collector: {text}\n".encode())
    except OSError:
        pass  # nobody reads stderr any more: the signal is handled all the same


class StopSignals:
    """``serve``'s signal handlers, installed once at the start (``install``); while the
    event loop serves (``serving``), a stop sets its event and a hangup reloads
    (``reload_with``)."""

    def __init__(self) -> None:
        # A plain attribute, polled: a threading.Event set from a handler deadlocks when
        # the handler interrupts the main thread inside that event's own wait().
        self.requested = False
        self._on_stop: Callable[[], object] | None = None
        self._on_hangup: Callable[[], object] | None = None

    def install(self) -> None:
        """Take the signals (from the main thread only: Python delivers them there)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOPS:
            signal.signal(signum, self._stop)
        signal.signal(signal.SIGHUP, self._hangup)

    def serving(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event
                ) -> Callable[[], None]:
        """While the loop serves, a stop sets ``stop``; one asked before (during
        start-up) sets it now. Returns the function that ends this and any
        ``reload_with``: call it on the loop, before it closes (whose close resets
        its handlers to the default actions)."""
        # The loop's own handlers, not a Python handler alone: a signal the kernel
        # hands to another thread (the store's) leaves the main thread asleep in the
        # loop's select() until its next timer; the loop's are woken through a pipe.
        for signum in HANDLED:
            loop.add_signal_handler(signum, self._on_loop, signum)
        self._on_stop = stop.set
        if self.requested:
            stop.set()

        def done() -> None:
            self._on_stop = self._on_hangup = None
            for signum in HANDLED:
                loop.remove_signal_handler(signum)  # the default action, for a moment
            self.install()
        return done

    def reload_with(self, reload: Callable[[], None]) -> None:
        """While the loop serves (``serving``), a hangup calls ``reload``."""
        self._on_hangup = reload

    def _on_loop(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self._hangup(signum, None)
        else:
            self._stop(signum, None)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            self._now(signum)
        self.requested = True
        if self._on_stop is not None:
            self._on_stop()
        else:
            # Start-up (or a close after a failure): what it is doing is finished first.
            _say(f"{signal.Signals(signum).name}: a clean stop once the step under way "
                 f"ends (send it again to stop at once)")

    @staticmethod
    def _now(signum: int) -> None:
        """The second stop: the process ends by the signal's default action, now."""
        _say(f"second {signal.Signals(signum).name}: stopping now, without the drain "
             f"(nothing acknowledged is lost; the next start repairs the rest)")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def _hangup(self, _signum: int, _frame: FrameType | None) -> None:
        if self._on_hangup is not None:
            self._on_hangup()
        else:
            _say("SIGHUP while not serving (starting or stopping): nothing to reload, the "
                 "collector goes on")
