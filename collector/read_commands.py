"""The read side of ``audit-collector``: ``query``, ``tail``, ``stats``, ``reindex``.

They open the data directory read-only (the index and the segments), so they run next
to a live ``serve`` — except ``reindex``, which rebuilds the index and so wants the
collector stopped.
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import orjson

from audit_middleware.catalogue import NAME_PATTERN, SEED_CATALOGUE

from . import config as collector_config
from . import formats, render
from . import query as q
from .options import parse_duration
from .storage.errors import IndexOutOfDateError
from .storage.segments import file_sizes
from .storage.time_limit import QueryTimeoutError, checked, time_limit

FORMATS = ("table", "jsonl", "csv", *formats.FORMATTERS)  # ocsf, ecs: collector/formats.py
FOLLOW_INTERVAL = 0.5


# -- shared ------------------------------------------------------------------------------
def data_dir_of(args: argparse.Namespace) -> Path:
    """The data directory the command reads (flags, environment, TOML), refused when it
    holds no audit data."""
    data_dir: Path = collector_config.load(args, for_serve=False).data_dir
    if not (data_dir / "index.sqlite").exists() and not (data_dir / "segments").is_dir():
        raise CommandError(f"no audit data in {data_dir}: point --data-dir (or "
                           f"AUDIT_DATA_DIR) at the collector's data directory")
    return data_dir


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


def _add_filters(parser: argparse.ArgumentParser) -> None:
    collector_config.add_arguments(parser, ["data_dir"])
    f = parser.add_argument_group("filters")
    f.add_argument("--type", dest="types", action="append", default=[], metavar="TYPE",
                   help="event type or glob such as 'run_*' (repeatable: any of them)")
    f.add_argument("--principal", help="acting user id, or 'system'")
    f.add_argument("--target", help="resource id")
    f.add_argument("--org", help="organization id")
    f.add_argument("--org-name", dest="org_name",
                   help="organization name, exact (the name the event carried)")
    f.add_argument("--workspace", help="workspace id")
    f.add_argument("--workspace-name", dest="workspace_name",
                   help="workspace name, exact (the name the event carried)")
    f.add_argument("--status", help="status, exact ('' for events without one)")
    f.add_argument("--client-ip", dest="client_ip", help="an IP, or a CIDR such as 10.0.0.0/8")
    f.add_argument("--since", help="RFC 3339 (without an offset: UTC), YYYY-MM-DD-HH-MM-SS "
                   "(UTC), or an age: 15m, 24h, 7d")
    f.add_argument("--until", help="same forms as --since")


def _filters(args: argparse.Namespace) -> q.Filters:
    return q.Filters(types=tuple(args.types), principal=args.principal, target=args.target,
                     org=args.org, workspace=args.workspace, client_ip=args.client_ip,
                     since=args.since, until=args.until, status=args.status,
                     org_name=args.org_name, workspace_name=args.workspace_name)


def _writer(fmt: str, out: TextIO) -> Callable[[list[dict[str, Any]], bool], None]:
    """A function printing one batch of records in ``fmt``. A CSV header comes once, with
    the first batch written with ``header=True``; a table's header before the first
    records (or alone, for ``header=True`` and none). A table's
    later rows keep the columns as wide as before, under that header; when a value needs
    a wider column, the header is printed again above them (``tail -f`` printed each
    batch at its own widths, out of line with the header)."""
    headed = [False]
    widths: list[list[int] | None] = [None]

    def write(records: list[dict[str, Any]], header: bool = True) -> None:
        if fmt == "jsonl":
            out.writelines(line.decode("utf-8") for line in render.jsonl(records))
        elif fmt in formats.FORMATTERS:
            out.writelines(line.decode("utf-8") for line in formats.json_lines(records, fmt))
        elif fmt == "csv":
            # Only when asked: a follower appending to a file (``tail -f -n 0 >> x.csv``)
            # must not put a header line in the middle of it.
            rows = render.csv_rows(records, terminal=out.isatty())
            head = next(rows)
            if header and not headed[0]:
                out.write(head)
            headed[0] = True
            out.writelines(rows)
        elif records or (header and not headed[0]):
            before = widths[0]
            text, widths[0] = render.table_with_widths(records, at_least=before)
            out.write(text.split("\n", 2)[2] if headed[0] and widths[0] == before else text)
            headed[0] = True
        out.flush()

    return write


# -- query -------------------------------------------------------------------------------
def query_arguments(parser: argparse.ArgumentParser) -> None:
    _add_filters(parser)
    parser.add_argument("--limit", type=int, help="records per page (default 100; not "
                        "with --all)")
    parser.add_argument("--cursor", help="continue after a page (printed on stderr); with "
                        "--all, every record after it")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--oldest-first", action="store_true", help="oldest first")
    # The API's name for it (order=newest|oldest): one vocabulary for both.
    order.add_argument("--order", choices=("newest", "oldest"), default=None,
                       help="newest first (the default) or oldest first")
    parser.add_argument("--all", action="store_true", help="every matching record, streamed")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="table (the default: the seed's columns), jsonl, csv, or "
                        "ocsf or ecs for a SIEM (docs/formats.md)")
    # No limit by default, unlike the API's query_timeout: an operator runs this on
    # purpose and holds no thread others wait for; the flag is for scripts.
    parser.add_argument("--timeout", type=_timeout, default=None, metavar="DURATION",
                        help="stop the query past this long, e.g. 30s or 5m, --all "
                        "included (default: no limit)")


def _timeout(value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError("give a duration above 0, e.g. 30s or 5m")
    return seconds


def run_query(args: argparse.Namespace) -> int:
    with time_limit(args.timeout, "--timeout"):
        return _query(args)


def _query(args: argparse.Namespace) -> int:
    data_dir, filters = data_dir_of(args), _filters(args)
    if args.order == "oldest":
        args.oldest_first = True
    write = _writer(args.format, sys.stdout)
    if args.all:
        if args.limit is not None:  # silently printing everything is not what was asked
            raise q.QueryError("--all prints every matching record and --limit one page of "
                               "them: give one or the other")
        batch: list[dict[str, Any]] = []
        matched = False
        for record in q.iter_records(data_dir, filters, newest_first=not args.oldest_first,
                                     cursor=args.cursor):
            batch.append(record)
            matched = True
            if len(batch) >= 500:
                write(batch, True)
                batch = []
        write(batch, True)
        if not matched:
            _note_unmatched_types(data_dir, args.types)
        return 0
    limit = 100 if args.limit is None else args.limit
    if limit < 1:
        raise q.QueryError("--limit must be at least 1")
    page = q.search(data_dir, filters, limit=limit, cursor=args.cursor,
                    newest_first=not args.oldest_first)
    write(page.records, True)
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)
    if not page.records:
        _note_unmatched_types(data_dir, args.types)
    return 0


_SEED_TYPES = frozenset(t for actions in SEED_CATALOGUE.values() for t in actions.values())


def _note_unmatched_types(data_dir: Path, types: list[str]) -> None:
    """After an empty answer, name each ``--type`` that no stored event has, with the
    closest stored or seed types: a typo is no error (an app's own type may simply not
    have happened yet), but an empty answer alone reads as "nothing was done". Under
    ``--timeout`` as the query is (a store may hold a million types): past it, the notes
    are left out, and the (empty, complete) answer stands."""
    if not types:
        return  # nothing to note: the stored types are not read
    try:
        notes = _unmatched_types(q.stored_types(data_dir), types)
    except QueryTimeoutError:
        print("note: --timeout passed before the --type values were checked against the "
              "stored event types (no suggestions); the empty answer is complete",
              file=sys.stderr)
        return
    for note in notes:
        print(note, file=sys.stderr)


def _unmatched_types(stored: frozenset[str], types: list[str]) -> list[str]:
    notes = []
    for pattern in types:
        if not NAME_PATTERN.fullmatch(pattern):
            if not fnmatch.filter(checked(stored), pattern):
                notes.append(f"note: no stored event type matches {pattern!r}")
        elif pattern not in stored and pattern not in _SEED_TYPES:
            close = difflib.get_close_matches(pattern, checked(sorted(stored | _SEED_TYPES)),
                                              n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            notes.append(f"note: no stored event has type {pattern!r}{hint}")
    return notes


# -- tail --------------------------------------------------------------------------------
def tail_arguments(parser: argparse.ArgumentParser) -> None:
    _add_filters(parser)
    parser.add_argument("-n", "--lines", type=int, default=10, help="last N records (default 10)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    parser.add_argument("--format", choices=FORMATS, default="jsonl",
                        help="jsonl (the default: one record a line, for pipes), table, "
                        "csv, ocsf or ecs")


def run_tail(args: argparse.Namespace, *, stop: Callable[[], bool] = lambda: False) -> int:
    if args.lines < 0:
        raise q.QueryError(f"-n {args.lines}: give how many of the newest records to print "
                           f"first, 0 or more")
    data_dir, filters = data_dir_of(args), _filters(args)
    write = _writer(args.format, sys.stdout)
    # One moment splits "last N" from "new ones": the last N are read up to the newest
    # record at that moment, the follow loop starts after it. A record arriving between
    # the two reads is then printed once, by the loop (read unbounded, "last N" had it
    # too, and it was printed twice).
    newest = q.newest_seq(data_dir)
    _write_last(write, data_dir, filters, args.lines, newest)
    if args.follow:
        _follow(write, data_dir, filters, newest, stop)
    return 0


def _follow(write: Callable[[list[dict[str, Any]], bool], None], data_dir: Path,
            filters: q.Filters, seen: int, stop: Callable[[], bool]) -> None:
    """Print the records stored after seq ``seen`` as they come, until ``stop()``.
    ``seen``: every record up to it was printed, did not match, or was said lost."""
    said = ""  # the problem last reported: a follower says it once, not every poll
    cursor = q.cursor_after(seen, filters)
    while not stop():
        try:
            page = q.search(data_dir, filters, limit=500, cursor=cursor, newest_first=False,
                            bounds=True)
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


# -- stats -------------------------------------------------------------------------------
def stats_arguments(parser: argparse.ArgumentParser) -> None:
    collector_config.add_arguments(parser, ["data_dir"])
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run_stats(args: argparse.Namespace) -> int:
    from .index import files_bytes as index_files_bytes
    from .serve import STATS_FILE

    data_dir = data_dir_of(args)
    # A running collector deletes and replaces files while they are listed: file_sizes
    # leaves out the ones gone by their stat.
    segments = file_sizes(sorted((data_dir / "segments").glob("segment-*")))
    report: dict[str, Any] = {
        "data_dir": str(data_dir),
        "events_indexed": _indexed(data_dir),
        "segments": {"count": len(segments),
                     "bytes": sum(segments.values()),
                     "compressed": sum(1 for p in segments if p.suffix == ".gz"),
                     "active": list(segments)[-1].name if segments else None},
        "index_bytes": index_files_bytes(data_dir / "index.sqlite"),
    }
    live = data_dir / STATS_FILE
    try:  # replaced atomically by a running collector; absent if none ever ran here
        collected = orjson.loads(live.read_bytes())
        age = round(time.time() - live.stat().st_mtime, 1)
    except FileNotFoundError:
        pass
    except (OSError, orjson.JSONDecodeError) as exc:  # a directory, garbage: say so
        report["collector"] = f"unreadable {STATS_FILE} ({exc})"
    else:
        report["collector"] = collected
        report["collector_stats_age_s"] = age
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for line in _flatten(report):
            print(line)
    return 0


def _indexed(data_dir: Path) -> int | str:
    """Events in the index, or why it cannot say (no index yet, one being built, damaged,
    unreadable): stats reports the rest all the same."""
    from .index import CATCHING_UP, connect_reader, count_rows

    index = data_dir / "index.sqlite"
    if not index.exists():
        return "no index.sqlite (`audit-collector reindex` builds one)"
    try:
        con, _ = connect_reader(index)
        try:
            con.execute("BEGIN")
            count = count_rows(con)
            catching_up = con.execute("SELECT value FROM meta WHERE key=?",
                                      (CATCHING_UP,)).fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        return f"unreadable index ({exc})"
    if catching_up is not None:  # a partial count must not read as the whole store's
        return f"{count} so far: the index is being brought up to date ({catching_up[0]})"
    return count


def _flatten(value: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}{key}.")
    else:
        # Escaped: values come from others too (the forwarder's last_error holds the
        # OTLP receiver's answer), and a raw line break forged a line of stats.
        yield render.terminal_safe(f"{prefix[:-1]:40s} {value}")


# -- reindex -----------------------------------------------------------------------------
def reindex_arguments(parser: argparse.ArgumentParser) -> None:
    collector_config.add_arguments(parser, ["data_dir"])


def run_reindex(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args)
    bar = ProgressBar(sys.stderr)
    report = q.reindex(data_dir, progress=bar.update)
    bar.done()
    print(f"reindexed {data_dir}: {report.describe()}")
    return 0


class ProgressBar:
    """``[#####.....] 52% 1234/2345`` on a terminal; a line per 10 % otherwise."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out, self.width, self.last = out, width, -1

    def update(self, done: int, total: int) -> None:
        pct = 100 if total <= 0 else min(100, done * 100 // total)
        if self.out.isatty():
            filled = self.width * pct // 100
            self.out.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {pct:3d}% "
                           f"{done}/{total}")
        elif pct // 10 != self.last // 10:
            self.out.write(f"reindex: {pct}% ({done}/{total})\n")
        self.last = pct
        self.out.flush()

    def done(self) -> None:
        if self.out.isatty():
            self.out.write("\n")
