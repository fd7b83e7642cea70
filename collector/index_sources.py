"""The index's per-source tables (a part of ``Index``, which inherits it): each source's
ranges of source_seq (``collector.storage.sources``), the highest number its batches said
it had given out, when and in which segment its last event was stored; read at start,
written in the batch's transaction, forgotten with the source by retention.
"""

from __future__ import annotations

import sqlite3

import orjson

from collector.storage.sources import Ranges


class _SourceTables:
    """``Index``'s per-source tables (see this module's doc)."""

    #: Set in ``Index.__init__``.
    con: sqlite3.Connection

    # -- reads --------------------------------------------------------------------------
    def source_ranges(self) -> dict[str, Ranges]:
        return {s: orjson.loads(r) for s, r in
                self.con.execute("SELECT source, ranges FROM sources")}

    def source_numbered(self) -> dict[str, int]:
        return dict(self.con.execute("SELECT source, highest FROM numbered"))

    def source_seen(self) -> dict[str, int]:
        return dict(self.con.execute("SELECT source, at_ns FROM source_seen"))

    def source_segment(self) -> dict[str, int]:
        return dict(self.con.execute("SELECT source, segment FROM source_segment"))

    # -- writes (inside begin()/commit()) -------------------------------------------------
    def set_source_ranges(self, changed: dict[str, Ranges]) -> None:
        self.con.executemany(
            "INSERT OR REPLACE INTO sources VALUES(?,?)",
            [(s, orjson.dumps(r).decode()) for s, r in changed.items()])

    def set_source_numbered(self, changed: dict[str, int]) -> None:
        self.con.executemany("INSERT OR REPLACE INTO numbered VALUES(?,?)", changed.items())

    def set_source_seen(self, seen: dict[str, int]) -> None:
        self.con.executemany("INSERT OR REPLACE INTO source_seen VALUES(?,?)", seen.items())

    def set_source_segment(self, segment: int, sources: list[str]) -> None:
        self.con.executemany("INSERT OR REPLACE INTO source_segment VALUES(?,?)",
                             [(source, segment) for source in sources])

    def forget_sources(self, names: list[str]) -> None:
        rows = [(name,) for name in names]
        for table in ("sources", "numbered", "source_seen", "source_segment"):
            # The table names are these constants, never input.
            self.con.executemany(f"DELETE FROM {table} WHERE source=?", rows)
