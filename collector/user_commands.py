"""``audit-collector users add|list|remove``: the reader accounts of the query API and
the admin panel (see ``collector.readers``).

    audit-collector users add alice --root     # prints alice's token, once
    audit-collector users list
    audit-collector users remove alice         # her token stops working at once
"""

from __future__ import annotations

import argparse
import sys

from . import config as collector_config
from .ownership import foreign_owner
from .readers import ReaderError, Readers


def users_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="create a reader and print its token (shown once)")
    add.add_argument("name", help="reader name: letters, digits, _ . @ -")
    add.add_argument("--root", action="store_true",
                     help="may read audit logs (only root readers may)")
    listing = sub.add_parser("list", help="readers and their roles (never their tokens)")
    remove = sub.add_parser("remove", help="delete a reader; its token stops working")
    remove.add_argument("name")
    for action in (add, listing, remove):  # --data-dir after the action, as people type it
        collector_config.add_arguments(action, ["data_dir"])


def run_users(args: argparse.Namespace) -> int:
    config = collector_config.load(args, for_serve=False)
    data_dir = config.data_dir
    readers = Readers(data_dir)
    refused = None if args.action == "list" else foreign_owner(
        data_dir, command=f"users {args.action}", writes="a readers.json",
        then="every sign-in and API read refused with 503", config_file=config.config_file)
    if refused is not None:
        print(f"audit-collector users {args.action}: {refused}", file=sys.stderr)
        return 2
    if args.action != "list" and not (data_dir / "segments").is_dir():
        # A reader added where no collector runs is one nobody can use: a typo in
        # --data-dir otherwise passed without a word.
        print(f"audit-collector users {args.action}: note: {data_dir} holds no collector "
              f"data (no segments/ yet): is --data-dir the collector's?", file=sys.stderr)
    try:
        if args.action == "add":
            token = readers.add(args.name, root=args.root)
            try:
                print(token, flush=True)
            except OSError:
                # Shown only here: a reader whose token nobody saw is no use, and its
                # name would be taken. Undone, and said so.
                readers.remove(args.name)
                print(f"audit-collector users add: the token could not be written to "
                      f"stdout (closed, or a broken pipe), so reader {args.name} was not "
                      f"added; run it again with stdout to a terminal or a file",
                      file=sys.stderr)
                return 2
            role = ("root" if args.root else "non-root (may not read audit logs: it can "
                    "scrape GET /metrics when metrics_auth = reader; give --root to read "
                    "audit logs)")
            print(f"added {role} reader {args.name}; its token, shown only now, is above",
                  file=sys.stderr)
        elif args.action == "list":
            rows = readers.all()
            if not rows and not data_dir.is_dir():
                print(f"no such data directory: {data_dir} (is --data-dir the "
                      f"collector's?)", file=sys.stderr)
                return 2
            if not rows:
                print(f"no readers in {readers.path}: add one with "
                      f"`audit-collector users add NAME --root`", file=sys.stderr)
            for r in rows:
                print(f"{r.name:<24} {r.role:<7} key {r.key_id}  created {r.created}")
        else:
            removed = readers.remove(args.name)
            print(f"removed reader {removed.name} ({removed.role})")
    except ReaderError as exc:
        print(f"audit-collector users {args.action}: {exc}", file=sys.stderr)
        return 2
    return 0
