"""``audit-collector tail [-f]``: the last N records, then (``-f``) the new ones as they
come, through the collector's compressions, retention and index rebuilds: a follower
waits and reads again, and says what retention deleted before it could print it, and
when a read of its data disk has not returned (a hung disk) for ``FOLLOW_STALL`` seconds
(``--timeout``'s, if given).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from . import query as q
from .read_arguments import (
    FORMATS,
    _add_filters,
    _add_timeout,
    _filters,
    data_dir_of,
    whole_number,
)
from .read_deadline import GRACE, Poller, Write, within_counted
from .read_output import _writer
from .storage.errors import IndexOutOfDateError
from .storage.time_limit import QUERY_TIMEOUT, time_limit

FOLLOW_INTERVAL = 0.5
#: Seconds a follower's poll runs, without --timeout, before it says on stderr that its
#: read has not returned: it hung there for good without a word.
FOLLOW_STALL: Final = QUERY_TIMEOUT


def tail_arguments(parser: argparse.ArgumentParser) -> None:
    _add_filters(parser)
    parser.add_argument("-n", "--lines", type=whole_number, default=10,
                        help="last N records (default 10)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    parser.add_argument("--format", choices=FORMATS, default="jsonl",
                        help="jsonl (the default: one record a line, for pipes), table, "
                        "csv, ocsf or ecs")
    _add_timeout(parser, "stop the last N records' read past this long, e.g. 30s or 5m, "
                 "a read the disk does not answer too (exit status 2); with -f, each "
                 "poll's too, said on stderr and retried (default: no limit; a poll "
                 f"still reading after {FOLLOW_STALL:g}s is said)")


def run_tail(args: argparse.Namespace, *, stop: Callable[[], bool] = lambda: False) -> int:
    if args.lines < 0:
        raise q.QueryError(f"-n {args.lines}: give how many of the newest records to print "
                           f"first, 0 or more")
    filters = _filters(args)
    write = _writer(args.format, sys.stdout)
    # One moment splits "last N" from "new ones": the last N are read up to the newest
    # record at that moment, the follow loop starts after it. A record arriving between
    # the two reads is then printed once, by the loop (read unbounded, "last N" had it
    # too, and it was printed twice).

    def last(out: Write) -> tuple[Path, int]:
        # The data directory's checks stat segments/: within the limit too, as query's
        # (a segments/ on a hung mount held tail --timeout there for good).
        data_dir = data_dir_of(args)
        newest = q.newest_seq(data_dir)
        _write_last(out, data_dir, filters, args.lines, newest)
        return data_dir, newest

    # As query's --timeout: a read the disk does not answer included, and the records
    # printed before it said to be an incomplete answer (read_deadline).
    data_dir, newest = last(write) if args.timeout is None else within_counted(
        last, write, args.timeout, "--timeout", "audit-tail")
    if args.follow:
        _follow(write, data_dir, filters, newest, stop, args.timeout)
    return 0


def _follow(write: Callable[[list[dict[str, Any]], bool], None], data_dir: Path,
            filters: q.Filters, seen: int, stop: Callable[[], bool],
            timeout: float | None) -> None:
    """Print the records stored after seq ``seen`` as they come, until ``stop()``.
    ``seen``: every record up to it was printed, did not match, or was said lost.
    Each poll runs under ``timeout`` (None: no limit); one still reading past it (or
    past ``FOLLOW_STALL``) is said on stderr and waited for: a follower has no end to
    cut, and one that exited had to be started again after the records it missed."""
    said = ""  # the problem last reported: a follower says it once, not every poll
    cursor = q.cursor_after(seen, filters)
    stall = (FOLLOW_STALL if timeout is None else timeout) + GRACE

    def poll() -> q.Page:
        # On the poller's thread (read_deadline), its Reader kept for the next poll.
        with time_limit(timeout, "--timeout"):
            return q.search(data_dir, filters, limit=500, cursor=cursor,
                            newest_first=False, bounds=True)

    def stalled() -> None:
        nonlocal said
        said = (f"a read of {data_dir} has not returned for {stall:g}s (a hung disk, a "
                f"frozen network file system?)")
        print(f"tail: {said}; waiting for it: new records are printed once it returns",
              file=sys.stderr)

    poller = Poller("audit-tail-poll", at_end=lambda: q.close_readers(data_dir))
    try:
        while not stop():
            try:
                page = poller.poll(poll, stall, on_stall=stalled)
            except (IndexOutOfDateError, sqlite3.DatabaseError, q.QueryError) as exc:
                # The collector is rewriting what was read (compression, retention, a busy
                # index, an index rebuilt at its restart, for a moment absent): a follower
                # waits and reads again rather than ending.
                if str(exc) != said:
                    said = str(exc)
                    print(f"tail: {exc}; retrying every {FOLLOW_INTERVAL:g}s", file=sys.stderr)
                time.sleep(FOLLOW_INTERVAL)
                continue
            if said:
                said = ""
                print("tail: reading again", file=sys.stderr)
            _say_deleted(page, seen, filters)
            if page.records:
                write(page.records, False)
            seen = _seen_after(page, seen)
            # A page that is not full has no next_cursor: continue after what it covered
            # (keeping the old cursor read the same records again, without end).
            cursor = page.next_cursor or q.cursor_after(seen, filters)
            if not page.records and not page.gone:
                time.sleep(FOLLOW_INTERVAL)
    finally:
        poller.close()


def _seen_after(page: q.Page, seen: int) -> int:
    """The seq up to which a follower has covered the store after ``page``: its last
    hit when full (more follow), else the newest seq of its snapshot (no more matched)."""
    last = max([int(r["seq"]) for r in page.records[-1:]] + page.gone[-1:] + [seen])
    if page.next_cursor is None and page.stored is not None:
        return max(last, page.stored[1])
    return last


def _say_deleted(page: q.Page, seen: int, filters: q.Filters) -> None:
    """Say on stderr what retention deleted before a follower after seq ``seen`` could
    print it, and go on: a follower behind retention skipped those without a word.
    Segments deleted before the page's snapshot are gone from the index too (whether
    their records matched filters cannot be told); records deleted while the page was
    read matched."""
    low, high = seen + 1, (page.stored[0] if page.stored is not None else seen + 1) - 1
    if high >= low:
        which = (f"{high - low + 1} record(s), seq {low}-{high}," if filters == q.Filters()
                 else f"the records of seq {low}-{high} (those that matched: it cannot be "
                      f"told now)")
        print(f"tail: retention deleted {which} before tail could show them; going on",
              file=sys.stderr)
    if page.gone:
        print(f"tail: retention deleted {len(page.gone)} matching record(s), seq "
              f"{page.gone[0]}-{page.gone[-1]}, while tail read them; going on",
              file=sys.stderr)


def _write_last(write: Callable[[list[dict[str, Any]], bool], None], data_dir: Path,
                filters: q.Filters, count: int, newest: int) -> None:
    """Print the last ``count`` records up to seq ``newest``, oldest first. ``-n`` is a
    count of lines, as tail's, and one page holds at most ``MAX_LIMIT`` (``tail -n
    20000`` was refused, its error naming a "limit"). More than a page is printed a page
    at a time: held all at once, ``tail -n 5000000`` held the store in memory."""
    # Also for -n 0 (a follower's start): bad filters end tail here, not in its loop.
    page = q.search(data_dir, filters, limit=min(max(count, 1), q.MAX_LIMIT),
                    newest_first=True, cursor=q.cursor_before(newest + 1, filters))
    if count <= len(page.records) or page.next_cursor is None:  # one page holds them
        if count:
            write(page.records[:count][::-1], True)
        return
    oldest = _oldest_of_last(data_dir, filters, count - len(page.records),
                             page.records[-1]["seq"], page.next_cursor)
    cursor: str | None = q.cursor_after(oldest - 1, filters)
    header = True
    while cursor is not None:
        page = q.search(data_dir, filters, limit=q.MAX_LIMIT, newest_first=False,
                        cursor=cursor)
        records = [record for record in page.records if record["seq"] <= newest]
        write(records, header)
        header = False
        # Past ``newest``: the follower's, printed by its loop.
        cursor = page.next_cursor if len(records) == len(page.records) else None


def _oldest_of_last(data_dir: Path, filters: q.Filters, more: int, oldest: int,
                    cursor: str | None) -> int:
    """The seq of the oldest of the last records: ``more`` records before seq
    ``oldest`` (where ``cursor`` continues), or the oldest there is. Walked back a page
    at a time, each dropped once its last seq is known."""
    while more > 0 and cursor is not None:
        page = q.search(data_dir, filters, limit=min(more, q.MAX_LIMIT), newest_first=True,
                        cursor=cursor)
        if page.records:
            oldest, more = page.records[-1]["seq"], more - len(page.records)
        cursor = page.next_cursor
    return oldest
