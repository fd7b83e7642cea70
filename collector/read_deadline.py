"""The read commands' reads on a daemon thread, waited for a bounded time: what ends
``query --timeout`` (and ``tail``, ``stats`` and ``verify --timeout``) on a hung data
disk, and tells a ``tail -f`` follower's user that its disk stopped answering.

``time_limit`` is checked inside SQLite and between records, on the reading thread: a
segment ``read()`` the disk never answers (a dying disk, a frozen network file system)
gives neither back control, and ``query --timeout 30s`` hung for good, without a word.
A thread blocked in the kernel cannot be interrupted, so the read runs on a daemon
thread of its own and the command stops waiting for it: the process exits without it (a
daemon thread is not joined at exit). What the read prints, the command's own thread
writes (``within``): only a read is ever left behind, never a write to stdout.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple, TypeVar

from .storage.time_limit import QueryTimeoutError, time_limit

T = TypeVar("T")
#: The read commands' output: print a batch of records (``read_output._writer``).
Write = Callable[[list[dict[str, Any]], bool], None]

#: Why a read command is stopped past its limit and ``GRACE``: the query's and verify's
#: reads look at the limit often (inside SQLite, between records and chunks), so one
#: still under way is a read that did not return.
HUNG_READ: Final = ("a read of the data directory did not return (a hung disk, a frozen "
                    "network file system?)")

#: Seconds past its limit a read is given to stop itself (its own checks stop it within
#: about a millisecond of the limit) before it is taken for one the disk does not answer.
GRACE: Final = 1.0


class _Written(NamedTuple):
    records: list[dict[str, Any]]
    header: bool
    done: threading.Event


def within(call: Callable[[Write], T], write: Write, seconds: float, setting: str,
           name: str, *, what: str = "the query",
           then: str = "check the data disk and ask again", why: str = HUNG_READ) -> T:
    """``call(relay)`` under ``time_limit(seconds, setting)``, on a daemon thread
    (``name``); ``QueryTimeoutError`` when it has not ended ``GRACE`` seconds past the
    limit: a read that did not return, left behind.

    The records ``call`` prints it hands to ``relay``, which has them written by
    ``write`` on this thread and returns once they are. The reading thread never
    writes to stdout itself: left behind, it printed on while the command reported
    the answer incomplete and exited; and blocked in a write to a reader of the
    output that had stopped reading (``| less``), it was taken for a hung disk. A
    write that waits for such a reader waits here, where no deadline is counted;
    the reading thread is then given ``GRACE`` to stop itself at its limit, which it
    reports as the query's limit, not the disk's fault. ``what``, ``why`` and ``then``
    word the error of a read still under way (``hung_error``)."""
    handoff: queue.Queue[_Written | concurrent.futures.Future[T]] = queue.Queue()

    def relay(records: list[dict[str, Any]], header: bool) -> None:
        done = threading.Event()
        handoff.put(_Written(records, header, done))
        done.wait()  # as when it wrote itself: what it reads or says next comes after

    def limited() -> None:
        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            # On the new thread: the limit is a context variable, which threads do not
            # share.
            with time_limit(seconds, setting):
                outcome.set_result(call(relay))
        except BaseException as exc:  # noqa: BLE001 - raised on the waiting thread
            outcome.set_exception(exc)
        handoff.put(outcome)

    threading.Thread(target=limited, name=name, daemon=True).start()
    end = time.monotonic() + seconds + GRACE
    while True:
        try:
            item = handoff.get(timeout=max(end - time.monotonic(), GRACE))
        except queue.Empty:
            raise hung_error(seconds, setting, what=what, then=then, why=why) from None
        if isinstance(item, _Written):
            write(item.records, item.header)  # raised (a closed pipe): the reader waits
            item.done.set()
            continue
        return item.result()


def within_counted(call: Callable[[Write], T], write: Write, seconds: float, setting: str,
                   name: str) -> T:
    """``within``, counting the records written: a read stopped after some were printed
    (``query --all``, ``tail -n`` past a page) says how many, in one wording for both
    (tail's said nothing, and its output read as the whole answer)."""
    printed = 0

    def counted(records: list[dict[str, Any]], header: bool) -> None:
        nonlocal printed
        write(records, header)
        printed += len(records)

    try:
        return within(call, counted, seconds, setting, name)
    except QueryTimeoutError as exc:
        if not printed:
            raise
        raise QueryTimeoutError(f"{exc}; the {printed} record(s) printed before it are "
                                f"an incomplete answer") from None


def hung_error(seconds: float, setting: str, *, what: str = "the query",
               then: str = "check the data disk and ask again",
               why: str = HUNG_READ) -> QueryTimeoutError:
    """``what`` (the query, the command...) stopped ``seconds`` past its start, in a read
    still under way: ``why`` (a read that did not return, unless the reads do not look
    at the limit: stats'); ``then``: what to do (verify's says its verdict is unknown)."""
    # Not Deadline.error's advice: a narrower query waits on the same disk.
    return QueryTimeoutError(
        f"{what} ran longer than {seconds:g} s ({setting}) and was stopped: {why}; "
        f"{then}; {setting} sets the limit")


def bounded(call: Callable[[], T], seconds: float, setting: str, name: str, *,
            what: str, then: str = "check the data disk and ask again",
            why: str = HUNG_READ) -> T:
    """``call()`` under ``within``, for a command that prints nothing until it has its
    answer (``stats``, ``verify``): it prints that answer itself, on its own thread."""
    def nothing(records: list[dict[str, Any]], header: bool) -> None:
        raise AssertionError("a bounded call prints nothing through within")

    return within(lambda _relay: call(), nothing, seconds, setting, name, what=what,
                  then=then, why=why)


class Poller:
    """A follower's polls (``tail -f``), on one daemon thread (``name``) taking them
    one at a time, each waited for however long it takes, with ``on_stall()`` once it
    has run ``stall`` seconds: a poll has no end to be cut at, and a read the disk never
    answers held the follower for good, silently.

    One thread, not one a poll: the Reader a thread keeps (``query_thread_readers``:
    the index's connection, the segment files) is kept between polls. A thread a poll
    opened and closed them every 0.5 s: ~1 ms a poll idle, ten times the read, and 40 %
    more time a page while catching up (a 300,000-record store). ``close`` ends the
    thread, ``at_end`` (closing its Readers) run on it last."""

    def __init__(self, name: str, at_end: Callable[[], None]) -> None:
        self._name = name
        self._at_end = at_end
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any],
                                             concurrent.futures.Future[Any]] | None]
        self._calls = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def poll(self, call: Callable[[], T], stall: float, *,
             on_stall: Callable[[], None]) -> T:
        future = self.submit(call)
        done, _ = concurrent.futures.wait([future], stall)
        if not done:
            on_stall()
            # This one, not another beside it: a second read would hang on the same
            # disk (the thread is in it: a poll waits for the one under way).
            concurrent.futures.wait([future])
        return future.result()

    def submit(self, call: Callable[[], T]) -> concurrent.futures.Future[T]:
        """``call`` queued for the thread (started if need be), its outcome the future's:
        for a caller that waits in its own way (the forwarder: until its stop too)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, args=(self._calls,),
                                            name=self._name, daemon=True)
            self._thread.start()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((call, future))
        return future

    def close(self) -> threading.Thread | None:
        """End the thread once its poll under way (if any) returns: not waited for (the
        thread is returned, to be joined by a caller that knows no poll hangs). A poll
        after it starts another thread."""
        thread = self._thread
        if thread is not None:
            self._calls.put(None)
            # Its own queue for the next thread: the None is the old one's.
            self._calls = queue.SimpleQueue()
            self._thread = None
        return thread

    def _serve(self, calls: queue.SimpleQueue[tuple[Callable[[], Any],
                                                     concurrent.futures.Future[Any]] | None],
               ) -> None:
        try:
            while (item := calls.get()) is not None:
                _answer(*item)
                # Not held while waiting for the next: the last call (its closure, the
                # forwarder's) was kept alive by this frame, and with it the Poller the
                # forwarder would have closed once dropped.
                del item
        finally:
            self._at_end()


def _answer(call: Callable[[], T], future: concurrent.futures.Future[T]) -> None:
    try:
        result = call()
    except BaseException as exc:  # noqa: BLE001 - raised in the follower
        future.set_exception(exc)
    else:
        future.set_result(result)
