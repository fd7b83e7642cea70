"""The read commands' reads on a daemon thread, waited for a bounded time: what ends
``query --timeout`` (and ``tail --timeout``) on a hung data disk, and tells a ``tail -f``
follower's user that its disk stopped answering.

``time_limit`` is checked inside SQLite and between records, on the reading thread: a
segment ``read()`` the disk never answers (a dying disk, a frozen network file system)
gives neither back control, and ``query --timeout 30s`` hung for good, without a word.
A thread blocked in the kernel cannot be interrupted, so the read runs on a daemon
thread of its own (``single_flight.on_daemon_thread``, as the API's disk calls do) and
the command stops waiting for it: the process exits without it (a daemon thread is not
joined at exit).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Final, TypeVar

from .single_flight import on_daemon_thread
from .storage.time_limit import QueryTimeoutError, time_limit

T = TypeVar("T")

#: Seconds past its limit a read is given to stop itself (its own checks stop it within
#: about a millisecond of the limit) before it is taken for one the disk does not answer.
GRACE: Final = 1.0


def _nothing() -> None:
    pass


def within(call: Callable[[], T], seconds: float, setting: str, name: str) -> T:
    """``call()`` under ``time_limit(seconds, setting)``, on a daemon thread (``name``);
    ``QueryTimeoutError`` when it has not ended ``GRACE`` seconds past the limit: a read
    that did not return, left behind."""

    def limited() -> T:
        # On the new thread: the limit is a context variable, which threads do not share.
        with time_limit(seconds, setting):
            return call()

    future = on_daemon_thread(limited, name, _nothing)
    done, _ = concurrent.futures.wait([future], seconds + GRACE)
    if not done:
        raise hung_error(seconds, setting)
    return future.result()


def hung_error(seconds: float, setting: str) -> QueryTimeoutError:
    # Not Deadline.error's advice: a narrower query waits on the same disk.
    return QueryTimeoutError(
        f"the query ran longer than {seconds:g} s ({setting}) and was stopped: a read of "
        f"the data directory did not return (a hung disk, a frozen network file "
        f"system?); check the data disk and ask again; {setting} sets the limit")


def waited(call: Callable[[], T], stall: float, name: str, *,
           on_stall: Callable[[], None]) -> T:
    """``call()`` on a daemon thread (``name``), waited for however long it takes, with
    ``on_stall()`` once it has run ``stall`` seconds: a follower's poll, which has no
    end to be cut at."""
    future = on_daemon_thread(call, name, _nothing)
    done, _ = concurrent.futures.wait([future], stall)
    if not done:
        on_stall()
        # This one, not another beside it: a second read would hang on the same disk,
        # and one more thread a poll would pile up for as long as it hangs.
        concurrent.futures.wait([future])
    return future.result()
