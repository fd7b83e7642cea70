"""``audit-collector query``: one page of matching records (``--cursor`` for the next),
or every one of them (``--all``), under ``--timeout`` if given (a read the disk never
answers included: ``collector.read_deadline``); after an empty answer, a
note on each ``--type`` no stored event has.
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import sys
from pathlib import Path
from typing import Any

from audit_middleware.catalogue import NAME_PATTERN, SEED_CATALOGUE

from . import query as q
from .read_arguments import (
    FORMATS,
    _add_filters,
    _add_timeout,
    _filters,
    data_dir_of,
    whole_number,
)
from .read_deadline import Write, within_counted
from .read_output import _writer
from .storage.time_limit import QueryTimeoutError, checked


def query_arguments(parser: argparse.ArgumentParser) -> None:
    _add_filters(parser)
    parser.add_argument("--limit", type=whole_number, help="records per page (default 100; not "
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
    _add_timeout(parser, "stop the query past this long, e.g. 30s or 5m, --all included, "
                 "a read the disk does not answer too (default: no limit)")


def run_query(args: argparse.Namespace) -> int:
    output = _writer(args.format, sys.stdout)
    if args.timeout is None:
        return _query(args, output)
    # Read on a thread of its own, left past the limit: a read the disk never answers
    # is checked by nothing, and the command hung there for good.
    return within_counted(lambda relay: _query(args, relay), output, args.timeout,
                          "--timeout", "audit-query")


def _query(args: argparse.Namespace, write: Write) -> int:
    data_dir, filters = data_dir_of(args), _filters(args)
    if args.order == "oldest":
        args.oldest_first = True
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
