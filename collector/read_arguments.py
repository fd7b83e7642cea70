"""What the read commands share: the data directory they read (refused when it holds
no audit data), the error a user can fix (``CommandError``, exit code 2), the filter
flags of ``query`` and ``tail`` and the ``Filters`` they make, their ``--timeout``, and
the output formats.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import config as collector_config
from . import formats
from . import query as q
from .options import parse_duration, parse_int
from .storage.in_the_way import SEGMENTS, SEGMENTS_THEN, refuse_other_than_a_dir

FORMATS = ("table", "jsonl", "csv", *formats.FORMATTERS)  # ocsf, ecs: collector/formats.py


def data_dir_of(args: argparse.Namespace, *, reads_segments: bool = True) -> Path:
    """The data directory the command reads (flags, environment, TOML), refused when it
    holds no audit data, or something else where its segments/ goes. ``reads_segments``
    False: the command reads the index alone (``losses``), and a segments/ this user
    may not look at is no reason to refuse it."""
    data_dir: Path = collector_config.load(args, for_serve=False).data_dir
    # A FIFO or a file there was "no audit data" (no index) or an index of records
    # nowhere: what it is, and what to do. One this user may not look at raises
    # PermissionError, which the command says with as whom to run it (ownership.py).
    try:
        refuse_other_than_a_dir(data_dir / "segments", SEGMENTS, SEGMENTS_THEN)
    except PermissionError:
        # segments/ may be a link to a disk of its own (docs/api.md) that this user may
        # not reach while the index beside it is readable: `losses` worked so before.
        # (os.path.exists: False for any stat that fails, a refused one too)
        if reads_segments or not os.path.exists(data_dir / "index.sqlite"):
            raise
        return data_dir
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


def _add_timeout(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--timeout", type=_timeout, default=None, metavar="DURATION",
                        help=help)


def _timeout(value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError("give a duration above 0, e.g. 30s or 5m")
    return seconds


def whole_number(value: str) -> int:
    """An argparse type for a count (``tail -n``, ``query --limit``): digits 0-9 only,
    as the options take them (``int`` read '٣' as 3, a value no one typed as such)."""
    try:
        return parse_int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number: give one in "
                                         f"digits 0-9, e.g. 10") from None
