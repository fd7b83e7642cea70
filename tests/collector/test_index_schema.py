"""Index schema changes: an index written by an older version is rebuilt from the
segments at start (once), a reader refuses it with the way out, and a rebuild fills
the columns of this schema exactly as the live store did."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from collector.index import INDEX_SCHEMA
from collector.query import Filters, QueryError, Reader, iter_records, reindex
from collector.store import RepairReport, StorageSettings, Store
from tests.collector.storage_helpers import event, open_store


@contextmanager
def opened(data_dir: Path) -> Iterator[tuple[Store, RepairReport]]:
    store = Store(StorageSettings(data_dir=data_dir))
    report = store.open()
    try:
        yield store, report
    finally:
        store.close()


def chunk_tables(con: sqlite3.Connection) -> list[str]:
    return [n for (n,) in con.execute(
        "SELECT name FROM sqlite_schema WHERE type='table' AND name GLOB 'events_*' "
        "ORDER BY name")]


def make_schema_3(index: Path) -> None:
    """Turn an index into what version 3 wrote: no name columns, no names table, no
    status index, schema 3."""
    con = sqlite3.connect(index)
    for table in chunk_tables(con):
        con.execute(f"DROP INDEX IF EXISTS {table}_status")
        con.execute(f"ALTER TABLE {table} DROP COLUMN org_name")
        con.execute(f"ALTER TABLE {table} DROP COLUMN workspace_name")
    con.execute("DROP TABLE names")
    con.execute("UPDATE meta SET value=3 WHERE key='schema'")
    con.commit()
    con.close()


def all_rows(data_dir: Path) -> list[tuple[object, ...]]:
    """Every chunk row, in seq order, whichever chunks hold them."""
    con = sqlite3.connect(data_dir / "index.sqlite")
    try:
        return sorted(row for table in chunk_tables(con)
                      for row in con.execute(f"SELECT * FROM {table}"))
    finally:
        con.close()


def test_an_index_of_an_older_schema_is_rebuilt_from_the_segments_at_start_once(
        tmp_path: Path) -> None:
    rows = [event(org_name=f"Org {n % 3}", status="ok" if n % 2 else "") for n in range(40)]
    with open_store(tmp_path) as store:
        store.write(rows)
    make_schema_3(tmp_path / "index.sqlite")
    with opened(tmp_path) as (store, report):
        assert report.index_rebuilt == f"index schema 3 is not {INDEX_SCHEMA}"
        found = list(iter_records(store, Filters(org_name="Org 1", status="ok")))
    assert [r["id"] for r in found] == [r["id"] for n, r in enumerate(rows)
                                        if n % 3 == 1 and n % 2]
    with opened(tmp_path) as (_, report):  # the rebuilt index says it is of this schema
        assert report.index_rebuilt is None


def test_a_reader_refuses_an_index_of_another_schema_and_says_how_to_rebuild_it(
        tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.write([event()])
    make_schema_3(tmp_path / "index.sqlite")
    with pytest.raises(QueryError, match="schema 3, this version reads schema "
                                         f"{INDEX_SCHEMA}: restart the collector.*reindex"):
        Reader(tmp_path)
    reindex(tmp_path)
    reader = Reader(tmp_path)
    try:
        assert len(reader.search(Filters()).records) == 1
    finally:
        reader.close()


def test_reindex_fills_every_column_as_the_live_store_did(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("collector.storage.group_commit.CHUNK_ROWS", 20)
    rows = [event(org_id=f"org-{n % 4}", org_name=f"Org {n % 4}", workspace_id=f"ws-{n % 5}",
                  workspace_name=f"W{n % 5}", status=["", "ok", "failed"][n % 3])
            for n in range(100)]
    with open_store(tmp_path) as store:
        for i in range(0, 100, 9):
            store.write(rows[i:i + 9])
    live = all_rows(tmp_path)
    reindex(tmp_path)
    assert all_rows(tmp_path) == live
    assert {r[10:12] for r in live} == {(f"Org {n % 4}", f"W{n % 5}") for n in range(100)}
