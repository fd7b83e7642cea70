"""Connections to the index: the writer's settings, a reader's (read-only, or immutable
once the collector has stopped), the files an index takes on disk and its row count.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final

from collector.storage.data_dir_lock import data_dir_held
from collector.storage.in_the_way import in_the_way_words
from collector.storage.regular_files import NotRegularFileError, check_regular
from collector.storage.segment_drop import NO_TIME
from collector.storage.segments import FILE_MODE, file_sizes

#: How long a connection waits for another's write lock (SQLite's busy handler).
BUSY_TIMEOUT_MS: Final = 10_000


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    refuse_planted(path)
    if not readonly and not path.exists():
        # Created here so it gets the store's file mode (SQLite gives -wal/-shm the same).
        path.touch(mode=FILE_MODE)
    # A reader opens an existing index only: mode=rw (WAL readers need to write the
    # -shm file) never creates one, where a plain connect left an empty index.sqlite
    # behind in a directory that had none.
    if readonly:
        return _connect_uri(path, "mode=rw")
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                          cached_statements=512)
    con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return con


def connect_reader(path: Path) -> tuple[sqlite3.Connection, bool]:
    """A read-only connection to an existing index, and whether it reads the file as
    immutable (see below).

    The store's files are 0640 and its directories 0750 so that a group of auditors can
    read them, but SQLite reads a WAL index only through its ``-shm`` file: while the
    collector runs, that file is there and a reader without write access opens it read
    only; once the collector has stopped it is gone, and a reader who may not create it
    got "attempt to write a readonly database" (and was told to run reindex). A stopped
    store's index does not change, so it is then read with ``immutable=1``. Such a
    reader must be reopened once a collector starts writing (``wal_path`` appears):
    an immutable connection never looks at the WAL."""
    # The -shm file is made beside the index: a writable index in a directory the
    # reader may not write to is read as a read-only one.
    if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
        return connect(path, readonly=True), False
    con = _connect_uri(path, "mode=ro")
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return con, False
    except sqlite3.OperationalError as exc:
        con.close()
        # With a -wal file left, the index holds more than its main file (a collector
        # killed, or one just starting): reading the main file alone would miss it.
        if wal_path(path).exists() or data_dir_held(path.parent):
            raise sqlite3.OperationalError(
                f"{exc}: this user may read {path} but not write beside it, and SQLite "
                f"needs to for now (a collector starting, or one killed left "
                f"{wal_path(path).name}); retry once the collector runs, or read as the "
                f"collector's user") from None
    return _connect_uri(path, "mode=ro&immutable=1"), True


def wal_path(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def files_bytes(path: Path) -> int:
    """The disk space the index at ``path`` takes: the file with its ``-wal`` (which
    grows while no checkpoint can run) and ``-shm``. One stat a file, no SQLite: safe
    beside a running collector, which may remove the WAL meanwhile."""
    return sum(file_sizes(path.parent.glob(f"{path.name}*")).values())


def index_files(path: Path) -> tuple[Path, Path, Path]:
    """The index at ``path``, its ``-wal`` and its ``-shm``: SQLite's files of it."""
    return path, wal_path(path), path.with_name(f"{path.name}-shm")


#: What the store keeps at the index's paths, as the collector's log names it.
INDEX_FILE = "a file of the index (index.sqlite, its -wal or -shm: made from the segments)"

#: What to do once it is out of the way, for the running collector (its query API).
#: Moving it away does not mend a running collector: its writer keeps the file that was
#: there open (replaced, not changed), and its readers would open the new one, or none.
#: A start makes the index afresh when index.sqlite is missing, and indexes what it
#: lacks otherwise: the segments hold every record, so none is lost.
_INDEX_FILE_THEN_SERVING = (
    "then restart the collector: its start rebuilds the index from the segments, or "
    "brings it up to date (nothing of the index is in what was there, and no record is "
    "lost: the segments hold them; or stop it, run `audit-collector reindex` and start "
    "it). Until then, queries are answered 503")


def index_file_said_by_the_collector(exc: NotRegularFileError, data_dir: Path) -> str | None:
    """``exc`` in the words of a running collector's log (its query API), when its file
    is the index of ``data_dir`` or one of SQLite's beside it; None for another file.
    What it is, by a stat alone (``in_the_way.kind_of``): never opened here."""
    if exc.filename is None or Path(exc.filename) not in index_files(data_dir / "index.sqlite"):
        return None
    return in_the_way_words(Path(exc.filename), INDEX_FILE, _INDEX_FILE_THEN_SERVING)


def refuse_planted(path: Path) -> None:
    """``NotRegularFileError`` if the index, its ``-wal`` or its ``-shm`` is a FIFO, a
    device or a directory: SQLite opened them and said only "disk I/O error" (reindex
    crashed with it), and a read-only reader's open of a FIFO waited for a writer for
    good. By a stat alone (``check_regular``): an open and close of our own would drop
    this process's POSIX locks on them, SQLite's writer's included."""
    for part in index_files(path):
        try:
            check_regular(part)
        except (FileNotFoundError, PermissionError):
            continue  # none yet (SQLite makes it), or SQLite's own error says it better
        except NotRegularFileError as exc:
            raise NotRegularFileError(
                exc.errno, f"{exc.strerror}: move it away (nothing of the index is in it); "
                f"the index is rebuilt from the segments at the collector's next start, "
                f"or by `audit-collector reindex`", str(part)) from None


def _connect_uri(path: Path, options: str) -> sqlite3.Connection:
    refuse_planted(path)
    con = sqlite3.connect(f"{path.resolve().as_uri()}?{options}", isolation_level=None,
                          check_same_thread=False, cached_statements=512, uri=True)
    con.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    con.execute("PRAGMA query_only=1")
    return con


def count_rows(con: sqlite3.Connection) -> int:
    """Events in the index (the partitions' row counts; no table scan), leaving out
    those of segments retention deleted, hidden until the indexer drops their rows."""
    return int(con.execute("SELECT coalesce(sum(rows), 0) FROM chunks WHERE min_created<>?",
                           (NO_TIME[0],)).fetchone()[0])


def writer_connection(path: Path) -> sqlite3.Connection:
    con = connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    # The segments are the source of truth (fsynced before the index commits), and
    # start-up indexes whatever the index lacks: no fsync per index commit.
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("PRAGMA cache_size=-32768")
    con.execute("PRAGMA temp_store=MEMORY")
    # Checkpoints run on the indexer thread, not inside the store's commits.
    con.execute("PRAGMA wal_autocheckpoint=0")
    return con
