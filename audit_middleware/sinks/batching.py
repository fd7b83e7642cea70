"""A bounded queue drained by a background thread in batches.

Modelled on OpenTelemetry's batch processor: the caller only appends to a deque; the
worker waits on an event with a timeout and is woken early when a batch is full; the
export runs on the worker, and its exceptions are logged and counted, never raised into
the app. Unlike it, a full queue is never silent: the overflow hook decides (spill to a
spool, or drop and count).

Fork safety: after ``fork()`` the child gets an empty queue and no worker, so it never
re-sends what its parent had buffered; its worker starts on its first event. That runs
in ``os.register_at_fork``'s hook, which a server that forks in C without
``PyOS_AfterFork_Child`` never calls: uWSGI (app loaded in its master, the default,
unless ``py-call-osafterfork``). There (``forks_without_hooks``), the request path also
compares the process id, and a child that finds its parent's does the same on its
first event. A sink with state of its own to reset passes ``after_fork``: it runs with
the queue's reset whichever path finds the fork (the hook, any check, the queue's own
exit hook), so the sink is never left as its parent had it.

The queued items are usually ``AuditEvent``s; a sink may queue its own item type (the
collector sink queues ``(sequence number, event, receipt)``). A sink with background work
of its own (replaying a spool) passes ``idle``: the worker calls it after each drain.
"""

from __future__ import annotations

import atexit
import collections
import functools
import logging
import multiprocessing.util
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

from .._counter import Counter, worth_saying
from .._options import check_seconds, check_sizes
from ..errors import AuditError

log = logging.getLogger("audit_middleware")

T = TypeVar("T")
Export = Callable[[list[T]], None]
#: Asked by a flush or close whose time ran out: whether to wait on (``flush``).
More = Callable[[], bool] | None


class _FlushMarker:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


#: Times ``counts()`` tries for a moment when no move is under way (see ``_moving``).
_CONSISTENT_READ_TRIES: Final = 10_000
_POLL: Final = 0.05  # seconds between asking ``longer`` again (``flush``, ``close``)

_getpid = os.getpid
#: Held while a child that no at-fork hook told about its fork resets its sinks (two
#: request threads may find out at once). Never taken in a process that was not forked
#: so, hence never held by a parent at a fork.
_FORK_LOCK: Final = threading.Lock()


def forks_without_hooks() -> bool:
    """Whether this process runs in a server that forks its workers without running
    Python's at-fork hooks (``os.register_at_fork``): uWSGI, which forks in C after
    loading the app in its master, calls ``PyOS_AfterFork_Child`` only with
    ``py-call-osafterfork``. Without it, every worker kept the master's sink as it was:
    its source and numbering (the collector saw one source numbered 1, 2, 3 ... by
    every worker at once, each hiding the others' gaps), and, when the master's worker
    thread had started (an event at import, spool files adopted), a thread that does
    not exist in the worker: its events were queued, never sent, and lost at exit."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None:
        return False
    try:
        return not getattr(uwsgi, "opt", {}).get("py-call-osafterfork")
    except Exception:  # noqa: BLE001 - an unexpected uwsgi module: check, to be safe
        return True


class BatchingQueue(Generic[T]):
    def __init__(
        self,
        export: Export[T],
        *,
        max_queue: int = 10_000,
        max_batch: int = 512,
        max_delay: float = 0.2,
        name: str = "audit-sink",
        on_overflow: Callable[[T], bool] | None = None,
        exit_timeout: float = 5.0,
        idle: Callable[[], bool] | None = None,
        after_fork: Callable[[], None] | None = None,
    ) -> None:
        check_sizes(max_queue=max_queue, max_batch=max_batch)
        check_seconds(max_delay=max_delay, exit_timeout=exit_timeout)
        self._export = export
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._name = name
        self._on_overflow = on_overflow
        self._exit_timeout = exit_timeout
        self._idle = idle  # returns True when it has more work: then no wait before the next call
        #: The owning sink's reset in a forked child, run after the queue's by whichever
        #: path finds the fork first: the at-fork hook, or without it (uWSGI) any check,
        #: this queue's exit hook's close() included, which knows nothing of the sink.
        self._owner_after_fork = after_fork
        self.drained = Counter()  # handed to export
        self.failed = Counter()  # export raised: those events are lost, and counted
        self.dropped = Counter()  # queue full and the overflow hook did not take them
        self.overflowed = Counter()  # queue full, taken by the overflow hook
        self._closed = False
        #: Compare the process id on each submit (``forks_without_hooks``): a syscall,
        #: so only where a fork can happen without the at-fork hook.
        self.watch_pid = forks_without_hooks()
        self._pid = _getpid()
        self._init_runtime()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: call_if_alive(ref, "_after_fork"))
        atexit.register(lambda: call_if_alive(ref, "close", exit_timeout))
        close_in_multiprocessing_children(self, exit_timeout)

    def _init_runtime(self) -> None:
        self._queue: collections.deque[T | _FlushMarker] = collections.deque()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._closing = threading.Event()  # set by close(): ends an export's retry wait
        self._markers = Counter()  # flush markers in the queue: counts() stays O(1)
        self._taken = 0  # items the current export took beyond its batch (``take``)
        # Odd while the worker moves items from the queue to ``drained`` (counts() waits
        # for an even value that did not change): between the pops and the count, items
        # were in neither, and ``emitted`` lagged by thousands and went down.
        self._moving = 0

    def _after_fork(self) -> None:
        self._init_runtime()
        for counter in (self.drained, self.failed, self.dropped, self.overflowed):
            counter.reset()
        if self._owner_after_fork is not None:
            self._owner_after_fork()
        # Last: until the owner's reset is done too, another thread's check still finds
        # the fork (and waits on _FORK_LOCK) instead of using what the parent left, e.g.
        # a CollectorSink's numbering, taken up as the new source's, then restarted.
        self._pid = _getpid()

    def forked(self) -> bool:
        """Whether this process is a child that no at-fork hook told about its fork."""
        return self._pid != _getpid()

    def check_fork(self) -> None:
        """In a child forked without the at-fork hook: what the hook would have done,
        the owner's reset (``after_fork``) included, once, however many threads find
        out at the same time: the others wait until it is all done."""
        if self.forked():
            with _FORK_LOCK:
                if self.forked():
                    self._after_fork()

    # -- request path -------------------------------------------------------------------
    def submit(self, event: T) -> bool:
        """Enqueue; False when the queue was full (then the overflow hook ran)."""
        if self.watch_pid and self._pid != _getpid():
            self.check_fork()
        if self._worker is None:
            self._start()  # first event, first event after fork, or closed (raises)
        queue = self._queue
        if len(queue) >= self._max_queue:
            return self._overflow(event)
        queue.append(event)
        if len(queue) >= self._max_batch:
            self._wake.set()
        return True

    def _overflow(self, event: T) -> bool:
        if self._on_overflow is not None and self._on_overflow(event):
            self.overflowed.add()
            return False
        self.dropped.add()
        n = self.dropped.value
        if worth_saying(n):  # log at 1, 2, 4, 8, ... drops: visible, not a flood
            log.error("audit queue %s full (%d events): %d events dropped so far",
                      self._name, self._max_queue, n)
        return False

    def _start(self) -> None:
        if self._closed:
            raise AuditError("this audit sink is closed; configure a new one before emitting")
        with self._start_lock:
            if self._worker is None:
                worker = threading.Thread(target=self._run, name=self._name, daemon=True)
                worker.start()
                self._worker = worker

    # -- worker -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(self._max_delay)
            self._wake.clear()
            self._drain()
            if self._stopping and not self._queue:
                return
            if self._idle is not None and self._run_idle():
                self._wake.set()

    def _run_idle(self) -> bool:
        try:
            return bool(self._idle())  # type: ignore[misc]
        except Exception:
            log.exception("audit sink %s: background work failed", self._name)
            return False

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            item = queue[0]
            if type(item) is _FlushMarker:
                # What preceded the marker was delivered while it headed the queue: an
                # export that takes more (``take``) stops at it, so the flush is not kept
                # waiting behind events submitted after it.
                queue.popleft()
                self._markers.add(-1)
                item.done.set()
                continue
            self._deliver(self._move(self._max_batch))

    def _move(self, n: int) -> list[T]:
        """Up to ``n`` items from the head of the queue, up to a flush marker, counted as
        drained in the same step as far as ``counts()`` can tell."""
        queue = self._queue
        items: list[T] = []
        self._moving += 1
        try:
            while queue and len(items) < n and type(queue[0]) is not _FlushMarker:
                items.append(queue.popleft())  # type: ignore[arg-type]
            self.drained.add(len(items))
        finally:
            self._moving += 1
        return items

    def _deliver(self, batch: list[T]) -> None:
        if not batch:
            return
        self._taken = 0
        try:
            self._export(batch)
        except Exception:
            # What the export took from the queue meanwhile is lost with it: counted too.
            lost = len(batch) + self._taken
            self.failed.add(lost)
            log.exception("audit sink %s failed to deliver %d events", self._name, lost)

    def take(self, n: int) -> list[T]:
        """For the export, on the worker thread: up to ``n`` more items from the head of
        the queue, none unless ``n`` are queued, and never past a flush marker (the drain
        handles markers: what was submitted before a flush is delivered before it
        returns). A sender keeps its pipeline full with what arrived while it was
        sending, instead of waiting for every reply before the next drain."""
        if len(self._queue) - self._markers.value < n:
            return []
        items = self._move(n)
        self._taken += len(items)
        return items

    # -- control ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker now rather than on the first event (e.g. to replay a spool)."""
        if self._worker is None:
            self._start()

    def wake(self) -> None:
        """Deliver what is queued now instead of after ``max_delay``."""
        self._wake.set()

    def flush(self, timeout: float | None = None, *, longer: More = None) -> bool:
        """Wait until what was queued before this call was exported; False at the timeout.
        ``longer``: asked at the timeout, and every ``_POLL`` seconds after, whether to
        wait on (the export is making progress that must not be cut short)."""
        self.check_fork()  # else a child waits on its parent's worker, which it lacks
        if self._worker is None or not self._worker.is_alive():
            if self._queue and not self._closed:
                self._drain()  # no worker (e.g. never started): deliver on this thread
            return not self._queue
        marker = _FlushMarker()
        self._markers.add()
        self._queue.append(marker)
        self._wake.set()
        return _wait_longer(marker.done.wait, timeout, longer)

    def close(self, timeout: float | None = None, *, longer: More = None,
              owner_says: bool = False) -> bool:
        """Export what is queued and stop the worker, waiting for it up to ``timeout``
        (and on while ``longer()``, as ``flush``): False when it was given up on, said
        here unless ``owner_says`` (a sink that knows what its worker holds says it:
        "0 events still queued" beside its count was one wrong thing said of two)."""
        # Else a child joins its parent's worker, for the whole timeout; before the test
        # of _closed, so that the owner's reset (after_fork) runs in a child of a parent
        # that had closed the queue too.
        self.check_fork()
        if self._closed:
            return True
        self._closed = True
        self._closing.set()
        worker = self._worker
        if worker is None:
            self._drain()
            return True
        self._stopping = True
        self._wake.set()

        def ended(seconds: float | None) -> bool:
            worker.join(seconds)
            return not worker.is_alive()

        stopped = _wait_longer(ended, timeout, longer)
        self._worker = None
        if stopped or owner_says:
            return stopped
        log.error("audit sink %s: %d events still queued after %.1fs at close",
                  self._name, len(self._queue), timeout or 0)
        return False

    def wait_closing(self, timeout: float) -> bool:
        """For an export that retries: wait up to ``timeout`` seconds, True as soon as
        ``close()`` has begun. Then it should give up (fail the batch) rather than keep
        retrying: close() drains what remains within its timeout, a retry wait would
        hold the drain, and the process, until it ends."""
        return self._closing.wait(timeout)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def counts(self) -> dict[str, int]:
        self.check_fork()  # a child's counts start from zero, not from its parent's
        for _ in range(_CONSISTENT_READ_TRIES):
            moving = self._moving
            if moving & 1:
                time.sleep(0)  # let the worker finish the move
                continue
            queued = max(0, len(self._queue) - self._markers.value)
            drained = self.drained.value
            if self._moving == moving:
                break
        else:  # a move that never ends (a worker frozen at exit, a signal handler on
            # the moving thread): a possibly stale count rather than no answer
            queued = max(0, len(self._queue) - self._markers.value)
            drained = self.drained.value
        return {
            "submitted": drained + queued + self.dropped.value + self.overflowed.value,
            "queued": queued,
            "failed": self.failed.value,
            "dropped": self.dropped.value,
        }


def _wait_longer(wait: Callable[[float | None], bool], timeout: float | None,
                 longer: More) -> bool:
    """``wait(timeout)``, then ``wait`` again in slices for as long as ``longer()``."""
    if wait(timeout):
        return True
    while longer is not None and longer():
        if wait(_POLL):
            return True
    return False


def call_if_alive(ref: weakref.ref[Any], method: str, *args: object) -> None:
    """``ref().method(*args)`` unless the object is gone (fork and exit hooks hold only
    a weak reference: they must not keep a sink alive)."""
    obj = ref()
    if obj is not None:
        getattr(obj, method)(*args)


def close_in_multiprocessing_children(obj: object, timeout: float | None) -> None:
    """Call at construction: in a child that ``multiprocessing`` forks, ``obj.close()``
    runs when the child ends. Such a child ends with ``os._exit``, which skips atexit,
    and runs multiprocessing's own exit finalizers instead: without this, a ``Process``
    or ``Pool`` worker lost every event still queued when it returned, with no counter
    and no log. (The finalizer is made in multiprocessing's after-fork step: it clears
    the finalizers a child inherits, and those an ``os.register_at_fork`` hook makes.)"""
    multiprocessing.util.register_after_fork(
        obj, functools.partial(_close_at_child_exit, timeout=timeout))


def _close_at_child_exit(obj: object, *, timeout: float | None) -> None:
    # Bounded like the atexit close: a child must not hang on a collector that is down.
    multiprocessing.util.Finalize(None, call_if_alive, args=(weakref.ref(obj), "close", timeout),
                                  exitpriority=10)
