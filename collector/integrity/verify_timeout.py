"""``verify --timeout``: the check run on a thread of its own (``read_deadline``), so
that a read the data disk never answers ends it, and stopped between chunks once past
its limit. Either way it ends with no verdict, said as such, exit 2: a cron job or a
monitoring script that runs verify on a hung disk hung with it for good, and exit 1
("INVALID") or 0 ("valid") would be a verdict nothing was checked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from collector.read_deadline import bounded
from collector.storage.time_limit import QueryTimeoutError, check

if TYPE_CHECKING:
    from .verify import Progress, Report

NO_VERDICT: Final = "no verdict: the files were found neither valid nor INVALID"


def verify_within(run: Callable[[], Report], seconds: float) -> Report:
    """``run()``, ended past ``seconds`` (and ``read_deadline.GRACE`` if a read hangs)
    with ``QueryTimeoutError`` saying there is no verdict."""
    def stopped_in_words_of_verify() -> Report:
        try:
            return run()
        except QueryTimeoutError:
            # Its limit checked wherever verify spends its time (the digest chain's
            # signatures too, ``time_limit.checked``): the query's own message advises
            # narrowing filters verify does not have.
            raise _slower_than(seconds) from None

    return bounded(stopped_in_words_of_verify, seconds, "--timeout", "audit-verify",
                   what="the verification",
                   then=f"{NO_VERDICT}; check the data disk and run verify again")


def _slower_than(seconds: float) -> QueryTimeoutError:
    return QueryTimeoutError(
        f"the verification ran longer than {seconds:g} s (--timeout) and was stopped: "
        f"{NO_VERDICT}; give it a longer --timeout, or check part of the store with "
        f"--from/--to")


def limited(progress: Progress | None, seconds: float) -> Progress:
    """``progress``, first stopping the check past its limit: called between the chunks
    of a segment's read, where verify spends its time. The query's own message
    (``Deadline.error``) advises narrowing filters verify does not have."""
    def checked(done: int, total: int) -> None:
        try:
            check()
        except QueryTimeoutError:
            raise _slower_than(seconds) from None
        if progress is not None:
            progress(done, total)

    return checked
