"""``audit-collector losses``: the sources that lost events, and their acknowledgement.

    audit-collector losses [--format table|json]       # as GET /api/v1/sources/losses
    audit-collector losses ack --source S [--through N] --reason "..."

The list reads the data directory's files (the index's sources, ``loss-acks.json``),
as ``stats`` does: with the collector running or stopped, and no token. A recorded
acknowledgement whose file is still staged counts as made, as the store counts it
(``loss_acks.in_effect``).

An acknowledgement goes through the running collector's API (POST
/api/v1/sources/acknowledge-losses), with a root reader's token: the store that owns
the write path records it (who, why) and applies it, as for the panel. Written to the
files by this process instead, it would race the running store's own writes of them
(and be unseen by it until a restart), and its record, in the segments, would need the
store stopped. A collector that is not running, or serves no API, is said so.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any, Final

import orjson

from . import api_client
from . import config as collector_config
from .losses import listing
from .read_arguments import whole_number
from .read_commands import CommandError, data_dir_of
from .render import display_width, terminal_safe
from .storage import loss_acks, sources
from .storage.records import id_key

FORMATS: Final = ("table", "json")
#: The table's columns: (header, field of a listing's row).
_COLUMNS: Final = (("Source", "source"), ("Unack. gaps", "unacknowledged_gap_events"),
                   ("Unack. tail", "unacknowledged_tail_events"),
                   ("Gap events", "gap_events"), ("Tail events", "unreceived_tail_events"),
                   ("Acked through", "acknowledged_through"), ("Latest", "latest"),
                   ("Received", "received"), ("Last seen", "last_seen"))


def losses_arguments(parser: argparse.ArgumentParser) -> None:
    collector_config.add_arguments(parser, ["data_dir"])
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="table (the default) or json (as the API answers)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    ack = sub.add_parser(
        "ack", help="acknowledge a source's losses, through the running collector's API",
        description="Acknowledge a source's lost events (recorded as "
        "audit_loss_acknowledged, with the reader and the reason), through the running "
        "collector's API with a root reader's token.")
    ack.add_argument("--source", required=True, help="the source, as `losses` lists it")
    ack.add_argument("--through", type=whole_number, metavar="N",
                     help="its losses up to number N (default: every number it is known "
                     "to have given out so far)")
    ack.add_argument("--reason", required=True, help="why the loss is known (one line)")
    ack.add_argument("--api-url", metavar="URL",
                     help="the collector's API (default: from api_listen and "
                     "api_tls_cert, as serve reads them)")
    ack.add_argument("--reader-token-file", type=Path, metavar="PATH",
                     help=f"file holding a root reader's token (default: "
                     f"${api_client.TOKEN_ENV})")
    collector_config.add_arguments(ack, ["api_listen", "api_tls_cert"])
    # Given before ``ack`` (``losses --config X ack``), --config is not undone by the
    # subcommand's own default.
    for action in ack._actions:
        if action.dest == "config":
            action.default = argparse.SUPPRESS


def run_losses(args: argparse.Namespace) -> int:
    if args.action == "ack":
        return _acknowledge(args)
    report = listing(_stats_from_files(data_dir_of(args, reads_segments=False)))
    if args.format == "json":
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    sys.stdout.write(_table(report["sources"]))
    print(f"{len(report['sources'])} source(s) lost events; unacknowledged: "
          f"{report['unacknowledged_gap_events']} gap and "
          f"{report['unacknowledged_tail_events']} tail event(s)"
          + (f"; {report['sources_omitted']} source(s) not listed"
             if report["sources_omitted"] else ""), file=sys.stderr)
    return 0


def _stats_from_files(data_dir: Path) -> dict[str, Any]:
    """What ``Store.stats`` says of the sources, from the index and ``loss-acks.json``."""
    from .index import CATCHING_UP, connect_reader
    from .index_catching_up import catching_up_refusal

    index = data_dir / "index.sqlite"
    if not index.exists():
        raise CommandError(f"no index.sqlite in {data_dir}: start the collector, or "
                           f"`audit-collector reindex` builds one")
    try:
        con, _ = connect_reader(index)
        try:
            con.execute("BEGIN")  # one moment: sources, numbers and times agree
            catching_up = con.execute("SELECT value FROM meta WHERE key=?",
                                      (CATCHING_UP,)).fetchone()
            ranges = {s: orjson.loads(r) for s, r in
                      con.execute("SELECT source, ranges FROM sources")}
            numbered = dict(con.execute("SELECT source, highest FROM numbered"))
            seen = dict(con.execute("SELECT source, at_ns FROM source_seen"))
            # A recorded acknowledgement whose file is not in place yet is made (the
            # store applies it): as a start would, not as loss-acks.json alone says.
            acks = loss_acks.in_effect(data_dir, lambda record: con.execute(
                "SELECT 1 FROM ids WHERE id=?", (id_key(record),)).fetchone() is not None)
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise CommandError(f"cannot read {index} ({exc}): `audit-collector stats` says "
                           f"more") from None
    if catching_up is not None:  # its sources are not all there yet
        raise CommandError(catching_up_refusal(data_dir, catching_up[0],
                                               "its sources would be partial"))
    # As the store loads them: only the sources it knows (one retention forgot has none).
    acknowledged = {source: ack.through for source, ack in acks.items() if source in ranges}
    known = sources.overview(ranges, numbered, seen, acknowledged=acknowledged)
    return {"sources": known.reports, "sources_total": known.total,
            "sources_omitted": known.omitted,
            "unacknowledged_gap_events": known.unacknowledged_gap_events,
            "unacknowledged_tail_events": known.unacknowledged_tail_events}


def _table(rows: list[dict[str, Any]]) -> str:
    headers = [header for header, _ in _COLUMNS]
    # Sources are the clients' to name: shown escaped, never raw, on a terminal.
    cells = [[terminal_safe("" if row[f] is None else str(row[f])) for _, f in _COLUMNS]
             for row in rows]
    widths = [max([len(h)] + [display_width(c[i]) for c in cells])
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines.extend("  ".join(c + " " * (w - display_width(c))
                           for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in cells)
    return "\n".join(lines) + "\n"


def _acknowledge(args: argparse.Namespace) -> int:
    config = collector_config.load(args, for_serve=False)
    body: dict[str, Any] = {"source": args.source, "reason": args.reason}
    if args.through is not None:
        body["through"] = args.through
    try:
        api = api_client.ApiAccess(api_client.base_url(config, args.api_url),
                             api_client.reader_token(args.reader_token_file),
                             config.api_tls_cert)
        answer = api_client.post_json(api, "/api/v1/sources/acknowledge-losses", body)
    except api_client.ApiClientError as exc:
        if exc.status in (401, 403):
            raise CommandError(f"{exc}: give a root reader's token (`audit-collector users "
                               f"add NAME --root` makes one)") from None
        if exc.status is not None and exc.status >= 500:
            print(f"audit-collector losses ack: {exc}", file=sys.stderr)
            return 1  # the collector's to fix (its storage), not the command's
        raise CommandError(str(exc)) from None
    done = answer.get("acknowledged")
    if not isinstance(done, dict) or type(done.get(args.source)) is not int:
        print(f"audit-collector losses ack: {api.url} answered without saying what was "
              f"acknowledged ({answer!r}): is --api-url the collector's API?",
              file=sys.stderr)
        return 1
    print(f"acknowledged the losses of {terminal_safe(args.source)} through "
          f"{done[args.source]} (recorded as audit_loss_acknowledged)")
    return 0
