"""Exports of a selection: CSV in the seed's columns (formula cells neutralized, as the
CLI does), JSON-lines as stored, every matching record, streamed a page at a time."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

import orjson
import pytest

from audit_middleware.event import seed_date
from collector.api import exports
from collector.api.params import Selection
from collector.query import Filters, Reader
from collector.render import COLUMNS
from tests.api.conftest import COUNT, Env
from tests.collector.storage_helpers import event


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_has_the_seed_columns_and_date_form(env: Env) -> None:
    response = env.get("/api/v1/audit-logs/export.csv", env.root, type="user_sign_in")
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="audit-logs-') and '.csv"' in disposition
    header = response.text.splitlines()[0]
    assert header == ",".join([h for h, _ in COLUMNS] + ["ID", "Peer IP"])
    rows = csv_rows(response.text)
    stored = [r for r in env.rows if r["type"] == "user_sign_in"][::-1]  # newest first
    assert [r["ID"] for r in rows] == [r["id"] for r in stored]
    first, record = rows[0], stored[0]
    assert first["Creation date"] == seed_date(record["created"])
    assert (first["Principal"], first["Organization ID"], first["Client IP"]) == (
        record["principal"], record["org_id"], record["client_ip"])


def test_csv_neutralizes_cells_a_spreadsheet_would_run(env: Env) -> None:
    env.store.write([event(principal="=HYPERLINK(\"http://x\")", status="+cmd|calc")])
    rows = csv_rows(env.get("/api/v1/audit-logs/export.csv", env.root,
                            principal='=HYPERLINK("http://x")').text)
    assert rows[0]["Principal"] == "'=HYPERLINK(\"http://x\")"
    assert rows[0]["Status"] == "'+cmd|calc"


def test_jsonl_is_the_stored_records(env: Env) -> None:
    response = env.get("/api/v1/audit-logs/export.jsonl", env.root, order="oldest")
    assert response.headers["content-type"] == "application/x-ndjson"
    records = [orjson.loads(line) for line in response.text.splitlines()]
    assert [{k: r[k] for k in env.rows[0]} for r in records] == env.rows
    assert [r["seq"] for r in records] == list(range(1, COUNT + 1))


def test_an_export_holds_every_matching_record_over_many_pages(env: Env,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setattr(exports, "PAGE", 7)
    rows = csv_rows(env.get("/api/v1/audit-logs/export.csv", env.root).text)
    assert [r["ID"] for r in rows] == [r["id"] for r in env.rows[::-1]]


def test_an_empty_selection_is_a_header_only_csv(env: Env) -> None:
    text = env.get("/api/v1/audit-logs/export.csv", env.root, principal="nobody").text
    assert text.splitlines() == [",".join([h for h, _ in COLUMNS] + ["ID", "Peer IP"])]


def test_export_filters_are_checked_before_the_download_starts(env: Env) -> None:
    response = env.get("/api/v1/audit-logs/export.csv", env.root, until="soon")
    assert response.status_code == 400 and "is not a time" in response.json()["message"]


@pytest.mark.parametrize("param", ["limit", "cursor"])
def test_exports_take_no_paging_parameters(env: Env, param: str) -> None:
    response = env.get("/api/v1/audit-logs/export.jsonl", env.root, **{param: "5"})
    assert response.status_code == 400 and param in response.json()["message"]


class CountingPool:
    """Runs the export's work inline and counts the index pages it reads."""

    def __init__(self, reader: Reader) -> None:
        self.reader, self.pages = reader, 0
        search = reader.search

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.pages += 1
            return search(*args, **kwargs)

        reader.search = counted  # type: ignore[method-assign]

    async def run(self, work: Any) -> Any:
        return work(self.reader)


def test_an_export_reads_one_page_ahead_of_what_it_has_sent(env: Env,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    # Constant memory: whatever the selection's size, the stream holds at most the page
    # it is sending and the next one.
    monkeypatch.setattr(exports, "PAGE", 10)
    pool = CountingPool(Reader(env.store.settings.data_dir))
    selection = Selection(Filters(), newest_first=True)

    async def consume() -> list[int]:
        first = exports.first_page(pool.reader, selection)
        read_when_sent = []
        async for _chunk in exports.stream(
                pool, selection, "jsonl", first, exports.Sent()):  # type: ignore[arg-type]
            read_when_sent.append(pool.pages)
        return read_when_sent

    try:
        read_when_sent = asyncio.run(consume())
    finally:
        pool.reader.close()
    assert len(read_when_sent) == COUNT // 10
    assert all(read <= sent + 1 for sent, read in enumerate(read_when_sent, start=1))


def test_csv_keeps_the_peer_that_vouched_for_the_client_ip(env: Env) -> None:
    """A record's peer_ip (the trusted proxy, or the peer of a client that could not be
    attributed) was left out of the CSV: how the client IP was decided was lost there
    (a new-user review)."""
    env.store.write([event(client_ip="198.51.100.7", peer_ip="10.0.0.2", target="proxied"),
                     event(client_ip="", peer_ip="10.0.0.3", target="unattributed")])
    rows = csv_rows(env.get("/api/v1/audit-logs/export.csv", env.root, target="proxied").text)
    assert [(r["Client IP"], r["Peer IP"]) for r in rows] == [("198.51.100.7", "10.0.0.2")]
    rows = csv_rows(env.get("/api/v1/audit-logs/export.csv", env.root,
                            target="unattributed").text)
    assert [(r["Client IP"], r["Peer IP"]) for r in rows] == [("", "10.0.0.3")]
