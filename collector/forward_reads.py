"""The forwarder's reads of the store, on a thread of their own, waited for until they
return or the forwarder stops, with a word once one has run ``READ_STALL`` seconds.

A segment ``read()`` the disk never answers (a dying disk, a frozen network file system)
cannot be interrupted. Made on the forwarder's thread, it held it without a word:
``state`` went on saying "forwarding", the lag stood still (it is counted at each step),
and the stop waited ``drain_timeout`` for the thread before the process could exit.
Here the read runs on a reader thread (``read_deadline.Poller``: one thread keeping its
Reader between reads) and the forwarder's thread waits for it, so that:

- once it has run ``READ_STALL`` seconds, the log says so (once a read, not at every
  poll: the forwarder makes no other read meanwhile, a second one would hang on the
  same disk), ``stats`` says ``state`` "waiting_on_disk" and counts it (``disk_hung``);
- a stop does not wait for it: the forwarder's thread ends, the read is left to the
  disk (a daemon thread; nothing of the checkpoint depends on it). A read not yet said
  hung is given the stop's grace (``STOP_GRACE``) to end, its files closed with it;
- once it returns, forwarding goes on with what it read: the same read, never a second
  one beside it, so nothing is skipped and nothing is sent twice.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from collector import query as q
from collector.read_deadline import Poller
from collector.render import terminal_safe

__all__ = ["READ_STALL", "ReadLeftBehind", "StoreReads"]

log = logging.getLogger("collector.forward")  # the forwarder's lines, one logger

T = TypeVar("T")

#: Seconds a read of the store runs before the forwarder says it waits on the disk: a
#: batch is read in milliseconds, a busy disk takes a second or two, not ten (the
#: query API's THREAD_WAIT).
READ_STALL: Final = 10.0


class ReadLeftBehind(Exception):  # (not an error: the stop's way out of a read)
    """The forwarder stopped while a read of the store was under way: left to the disk."""


class StoreReads:
    def __init__(self, data_dir: Path, stopping: Callable[[], bool]) -> None:
        self._poller = Poller("audit-forward-read", at_end=lambda: q.close_readers(data_dir))
        # A forwarder dropped without a stop (one stepped by a test) left its reader
        # thread waiting for a read for good, the index's connection and segment files
        # open on it. Not at exit: the process ends its daemon threads itself.
        weakref.finalize(self, self._poller.close).atexit = False
        self._stopping = stopping
        self._lock = threading.Lock()
        #: Set when the read under way returns, or by ``interrupt`` (a stop).
        self._event = threading.Event()
        self._stalled_since: float | None = None  # monotonic, of the read said hung
        self.hung = 0  # reads that ran READ_STALL seconds (each said once)

    def read(self, call: Callable[[], T]) -> T:
        """``call()``'s outcome, read on the reader thread; ``ReadLeftBehind`` when the
        forwarder stops before it returns."""
        event = self._event = threading.Event()  # before the stop flag is looked at
        if self._stopping():
            raise ReadLeftBehind  # (none begun: a read after the stop is not made)
        future = self._poller.submit(call)
        future.add_done_callback(lambda _: event.set())
        started = time.monotonic()
        said = False
        while not future.done():
            if self._stopping():
                raise ReadLeftBehind
            left = started + READ_STALL - time.monotonic()
            if not said and left <= 0:
                said = True
                self._stalled(started)
            event.wait(None if said else left)
            event.clear()  # (the future says whether it was the read's end)
        if said:
            self._answered(started, future.exception())
        return future.result()

    def interrupt(self) -> None:
        """Stop waiting for the read under way (the caller set its stop flag first)."""
        self._event.set()

    def close(self, wait: float) -> None:
        """End the reader thread, its Readers closed on it: waited for up to ``wait``
        seconds unless its read under way was said hung (left to the disk: the thread
        ends once it returns). Any other read ends within the wait: not waited for,
        the stop returned with the index's connection and the segment files still
        open on that thread. The forwarder waits on no read once stopped: its stats
        then say "stopped", the hung read counted in ``disk_hung``."""
        with self._lock:
            hung = self._stalled_since is not None
            self._stalled_since = None
        thread = self._poller.close()
        if thread is not None and not hung:
            thread.join(wait)

    @property
    def waiting(self) -> bool:
        """Whether a read under way has run ``READ_STALL`` seconds."""
        with self._lock:
            return self._stalled_since is not None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            since = self._stalled_since
            return {"disk_waiting": 0 if since is None else 1,
                    "disk_waiting_seconds": 0.0 if since is None
                    else round(time.monotonic() - since, 3),
                    "disk_hung": self.hung}

    def _stalled(self, started: float) -> None:
        with self._lock:
            self._stalled_since = started
            self.hung += 1
        log.error("forwarder: a read of the data directory has not returned for %g s (a "
                  "hung disk, a frozen network file system?): forwarding waits on it and "
                  "goes on where it was once it returns, nothing skipped or sent twice; "
                  "ingest goes on. Check the data disk", READ_STALL)

    def _answered(self, started: float, error: BaseException | None) -> None:
        with self._lock:
            self._stalled_since = None
        took = time.monotonic() - started
        if error is None:
            log.warning("forwarder: the data directory answered again after %.1f s; "
                        "forwarding goes on", took)
            return
        # "Forwarding goes on" was said of a read that failed: nothing was forwarded,
        # and the failure (retried with backoff) is the forwarder's next line.
        log.warning("forwarder: the read of the data directory returned after %.1f s, "
                    "but with an error (%s): nothing was read or forwarded; the "
                    "forwarder retries with backoff", took,
                    terminal_safe(f"{type(error).__name__}: {error}"))
