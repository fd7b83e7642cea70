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


def make_schema_4(index: Path) -> None:
    """Turn an index into what version 4 wrote: a table of its own per chunk
    (events_000001, ...), no events or postings tables, schema 4."""
    con = sqlite3.connect(index)
    for chunk, first, last in con.execute(
            "SELECT chunk, first_seq, last_seq FROM chunks").fetchall():
        table = f"events_{chunk:06d}"
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM events "
                    f"WHERE seq BETWEEN ? AND ?", (first, last))
        con.execute(f"CREATE INDEX {table}_principal ON {table}(principal)")
    for (name,) in con.execute("SELECT name FROM sqlite_schema WHERE type='table' "
                               "AND (name = 'events' OR name GLOB 'ix_*')").fetchall():
        con.execute(f"DROP TABLE {name}")
    con.execute("UPDATE meta SET value=4 WHERE key='schema'")
    con.commit()
    con.close()


def all_rows(data_dir: Path) -> list[tuple[object, ...]]:
    """Every events row, in seq order."""
    con = sqlite3.connect(data_dir / "index.sqlite")
    try:
        return con.execute("SELECT * FROM events ORDER BY seq").fetchall()
    finally:
        con.close()


def test_an_index_of_an_older_schema_is_rebuilt_from_the_segments_at_start_once(
        tmp_path: Path) -> None:
    rows = [event(org_name=f"Org {n % 3}", status="ok" if n % 2 else "") for n in range(40)]
    with open_store(tmp_path) as store:
        store.write(rows)
    make_schema_4(tmp_path / "index.sqlite")
    with opened(tmp_path) as (store, report):
        assert report.index_rebuilt == f"index schema 4 is not {INDEX_SCHEMA}"
        found = list(iter_records(store, Filters(org_name="Org 1", status="ok")))
    assert [r["id"] for r in found] == [r["id"] for n, r in enumerate(rows)
                                        if n % 3 == 1 and n % 2]
    with opened(tmp_path) as (_, report):  # the rebuilt index says it is of this schema
        assert report.index_rebuilt is None
    con = sqlite3.connect(tmp_path / "index.sqlite")
    try:  # the old chunk tables went with the rebuild
        assert con.execute("SELECT name FROM sqlite_schema WHERE name GLOB 'events_*'"
                           ).fetchall() == []
    finally:
        con.close()


def test_a_reader_refuses_an_index_of_another_schema_and_says_how_to_rebuild_it(
        tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.write([event()])
    make_schema_4(tmp_path / "index.sqlite")
    with pytest.raises(QueryError, match="schema 4, this version reads schema "
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
