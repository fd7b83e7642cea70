"""``audit-collector stats``: what the data directory holds (events indexed, segments,
index size) and, when a collector runs or ran there, the stats it last wrote; under
``--timeout`` if given (a read the disk never answers included:
``collector.read_deadline``).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import orjson

from . import config as collector_config
from . import render
from .read_arguments import _add_timeout, data_dir_of
from .read_deadline import bounded
from .storage.regular_files import read_regular
from .storage.segments import file_sizes

#: Why stats was stopped past its limit. Its reads never look at the limit (SQLite's
#: count over a large index, the listing of a large segments/ run on past it): a read
#: still under way may be slow as well as hung, and stats cannot tell which. "A hung
#: disk" alone sent the operator of a merely large store to check a disk that was fine.
SLOW_OR_HUNG: Final = (
    "a read of the data directory was still under way, slow or hung (stats cannot tell "
    "which: a large store's index count or segment listing is not stopped at the limit; "
    "a hung disk or a frozen network file system never answers)")
#: ... and what to do for each.
SLOW_OR_HUNG_THEN: Final = ("if the store is large, give it a longer --timeout; else "
                            "check the data disk and run stats again")


def stats_arguments(parser: argparse.ArgumentParser) -> None:
    collector_config.add_arguments(parser, ["data_dir"])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    # No limit by default, as query's: the flag is for monitoring scripts and cron jobs,
    # which a hung data disk held for good.
    _add_timeout(parser, "stop past this long, e.g. 30s or 5m, a read the disk does not "
                 "answer too (default: no limit)")


def run_stats(args: argparse.Namespace) -> int:
    if args.timeout is None:
        report = _report(args)
    else:
        # Read on a thread of its own, left past the limit: the index's count, the
        # segments' listing and the stats file are reads a hung disk never answers.
        report = bounded(lambda: _report(args), args.timeout, "--timeout", "audit-stats",
                         what="the command", why=SLOW_OR_HUNG, then=SLOW_OR_HUNG_THEN)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for line in _flatten(report):
            print(line)
    return 0


def _report(args: argparse.Namespace) -> dict[str, Any]:
    from .index import files_bytes as index_files_bytes
    from .stats_file import MAX_STATS_BYTES, STATS_FILE, STATS_INTERVAL

    data_dir = data_dir_of(args)
    # A running collector deletes and replaces files while they are listed: file_sizes
    # leaves out the ones gone by their stat (not those refused: "0 segments" of a
    # segments/ this user may list but not search).
    segments = file_sizes(_segment_paths(data_dir / "segments"), raise_refused=True)
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
        # A regular file only, of a bounded size: a FIFO in its place held stats for good.
        collected = orjson.loads(read_regular(live, MAX_STATS_BYTES))
        age = round(time.time() - live.stat().st_mtime, 1)
        if not isinstance(collected, dict):  # read as a running collector's
            raise TypeError(f"a JSON {type(collected).__name__}, not the object a "
                             f"collector writes")
    except FileNotFoundError:
        pass
    except (OSError, ValueError, TypeError) as exc:  # a directory, garbage: say so
        report["collector"] = (f"unreadable {STATS_FILE} ({exc}): a running collector "
                               f"replaces it every {STATS_INTERVAL:g} s; else move it away")
    else:
        report["collector"] = collected
        report["collector_stats_age_s"] = age
        report["collector_state"] = _state(collected, age, STATS_INTERVAL)
    return report


def _segment_paths(segments_dir: Path) -> list[Path]:
    """The ``segment-*`` files of ``segments_dir`` (none when there is no such
    directory: an index alone is a store too). A listing this user may not make raises
    PermissionError: Path.glob took it for an empty directory, and stats said "0
    segments" of a store this user may only not look into."""
    try:
        names = os.listdir(segments_dir)
    except FileNotFoundError:
        return []
    return sorted(segments_dir / name for name in names if name.startswith("segment-"))


def _state(collected: dict[str, Any], age: float, interval: float) -> str:
    """Whether the collector whose stats these are runs, as far as its stats file tells:
    the stop's last write says "stopped" (or "failed": its stop or its start-up raised,
    and its log says what); a running one rewrites it every ``interval``
    seconds. Without a lock on the data directory (which ``verify`` takes, and which a
    collector starting at that moment would find held), this is what can be said."""
    state = collected.get("state")
    if state not in (None, "running", "stopped", "failed"):  # (None: an older version's)
        return (f"unknown: its state is {str(state)[:40]!r}, which no collector writes "
                f"(running, stopped or failed): was the file edited or replaced?")
    if age < -interval:
        # Dated ahead of this clock: its age tells nothing (it read as running, or as
        # stopped a negative number of seconds ago).
        return (f"unknown: its stats are dated {-age:g} s in the future (a clock set back "
                f"since it was written, or another machine's clock): see its log")
    age = max(age, 0.0)  # a clock's jitter, not an age
    if state == "stopped":
        return f"stopped (a clean stop, {age:g} s ago)"
    if state == "failed":
        return (f"stopped after an error ({age:g} s ago): see its log (its stop or its "
                f"start-up failed)")
    if age <= 3 * interval:
        return "running"
    return (f"not running, or its writes hang: its stats are {age:g} s old (a running "
            f"collector writes them every {interval:g} s), and it did not stop cleanly "
            f"(killed, crashed, its machine stopped?): see its log")


def _indexed(data_dir: Path) -> int | str:
    """Events in the index, or why it cannot say (no index yet, one being built, damaged,
    unreadable): stats reports the rest all the same."""
    from .index import CATCHING_UP, connect_reader, count_rows
    from .index_catching_up import catching_up_state

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
        return f"{count} so far: {catching_up_state(data_dir, catching_up[0])}"
    return count


def _flatten(value: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}{key}.")
    else:
        # Escaped: values come from others too (the forwarder's last_error holds the
        # OTLP receiver's answer), and a raw line break forged a line of stats.
        yield render.terminal_safe(f"{prefix[:-1]:40s} {value}")
