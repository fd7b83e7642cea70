"""The status, org_name and workspace_name parameters of the audit-log endpoints: pages,
CSV and JSON-lines exports select the same events, the read's audit event names them,
and bad values are a 400 that says what to do."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.own_records import AUDIT_LOG_EXPORTED, AUDIT_LOG_VIEWED
from tests.api.conftest import Env, make_env
from tests.collector.storage_helpers import BASE_NS, event

HOUR = 3600 * 10**9
# (org_id, org_name, workspace_id, workspace_name, status), cycled over the added events.
NAMED = [("org-n1", "Northwind", "ws-n1", "Warehouse", "succeeded"),
         ("org-n1", "Northwind", "ws-n2", "Shop", "failed: TimeoutError"),
         ("org-n2", "Northwind & Sons", "ws-n3", "Warehouse", "succeeded"),
         ("org-n3", "Contoso", "ws-n4", "Shop", "")]


@pytest.fixture
def named(tmp_path: Path) -> Iterator[tuple[Env, list[dict[str, Any]]]]:
    """The API corpus (one org name, one workspace name, no status) plus 40 events with
    names and statuses, newer than it."""
    for env in make_env(tmp_path / "data"):
        added = []
        for n in range(40):
            org_id, org_name, ws_id, ws_name, status = NAMED[n % len(NAMED)]
            added.append(event(org_id=org_id, org_name=org_name, workspace_id=ws_id,
                               workspace_name=ws_name, status=status,
                               created_ns=BASE_NS + (200 + n) * HOUR))
        env.store.write(added)
        yield env, added


def newest_first(rows: list[dict[str, Any]], **want: str) -> list[str]:
    return [r["id"] for r in rows[::-1] if all(r[k] == v for k, v in want.items())]


def every_page(env: Env, **params: str) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = env.get("/api/v1/audit-logs", env.root, limit=4, **params,
                       **({"cursor": cursor} if cursor else {})).json()
        ids += [r["id"] for r in page["records"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


@pytest.mark.parametrize("params", [
    {"status": "succeeded"},
    {"status": "failed: TimeoutError"},
    {"org_name": "Northwind"},
    {"org_name": "Northwind & Sons"},
    {"org_name": "Acme"},  # the corpus' organizations
    {"workspace_name": "Warehouse"},
    {"workspace_name": "Main"},
    {"org_name": "Northwind", "status": "succeeded"},
    {"org_name": "Northwind", "workspace_name": "Shop", "status": "failed: TimeoutError"},
    {"org_name": "Northwind", "org": "org-n1", "workspace_name": "Warehouse"},
])
def test_each_new_filter_alone_and_combined(named: tuple[Env, list[dict[str, Any]]],
                                            params: dict[str, str]) -> None:
    env, added = named
    fields = {"org": "org_id"}
    want = newest_first(env.rows + added, **{fields.get(k, k): v for k, v in params.items()})
    assert want and every_page(env, **params) == want


def test_a_name_no_event_carries_is_an_empty_page(named: tuple[Env, list[dict[str, Any]]]
                                                  ) -> None:
    env, _ = named
    for params in ({"org_name": "Northwind Traders"}, {"workspace_name": "warehouse"},
                   {"status": "Succeeded"}, {"org_name": "Contoso", "status": "succeeded"}):
        page = env.get("/api/v1/audit-logs", env.root, **params).json()
        assert page["records"] == [] and page["next_cursor"] is None, params


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_exports_select_the_same_events(named: tuple[Env, list[dict[str, Any]]],
                                        fmt: str) -> None:
    env, added = named
    params = {"org_name": "Northwind", "status": "succeeded"}
    response = env.get(f"/api/v1/audit-logs/export.{fmt}", env.root, **params)
    assert response.status_code == 200
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(response.text)))
        got = [r["ID"] for r in rows]
        assert {(r["Organization name"], r["Status"]) for r in rows} == {
            ("Northwind", "succeeded")}
    else:
        got = [orjson.loads(line)["id"] for line in response.text.splitlines()]
    assert got == newest_first(added, org_name="Northwind", status="succeeded")


def test_reads_record_the_new_filters_in_their_status(named: tuple[Env, list[dict[str, Any]]]
                                                      ) -> None:
    env, _ = named
    asked = {"status": "succeeded", "org_name": "Northwind", "workspace_name": "Warehouse"}
    env.get("/api/v1/audit-logs", env.root, **asked)
    env.get("/api/v1/audit-logs/export.csv", env.root, **asked)
    viewed, exported = env.read_events()
    assert viewed["type"] == AUDIT_LOG_VIEWED and exported["type"] == AUDIT_LOG_EXPORTED
    for read in (viewed, exported):
        assert asked.items() <= orjson.loads(read["status"]).items()


@pytest.mark.parametrize(("query", "message"), [
    ("status=a&status=b", "status is given more than once"),
    ("org_name=a&org_name=b", "org_name is given more than once"),
    ("workspace_name=a&workspace_name=b", "workspace_name is given more than once"),
    ("orgname=Acme", ("unknown parameter(s) orgname: use client_ip, cursor, limit, order, "
                      "org, org_name, principal, since, status, target, type, until, "
                      "workspace, workspace_name")),
])
def test_bad_values_are_a_400_saying_what_to_do(env: Env, query: str, message: str) -> None:
    for path in ("/api/v1/audit-logs", "/api/v1/audit-logs/export.csv"):
        response = env.client.get(f"{path}?{query}",
                                  headers={"Authorization": f"Bearer {env.root}"})
        assert response.status_code == 400
        body = response.json()
        assert body["error"] == "bad_request"
        if "cursor, limit" in message and path.endswith(".csv"):
            message = message.replace("cursor, limit, ", "")  # exports do not page
        assert message in body["message"], body["message"]


def test_values_are_matched_exactly_not_trimmed(tmp_path: Path) -> None:
    """A look-alike principal with a trailing space is found apart from the real one,
    and a space-padded filter value does not match the unpadded name."""
    for env in make_env(tmp_path / "data"):
        lookalike = event(principal="admin ", target="t-spaced", created_ns=BASE_NS + 300 * HOUR)
        real = event(principal="admin", target="t-plain", created_ns=BASE_NS + 301 * HOUR)
        env.store.write([lookalike, real])
        found = {name: [r["id"] for r in env.get("/api/v1/audit-logs", env.root,
                                                  principal=name).json()["records"]]
                 for name in ("admin ", "admin", " admin")}
        assert found == {"admin ": [lookalike["id"]], "admin": [real["id"]], " admin": []}
        everything = stored_ids(env)
        assert lookalike["id"] in everything and real["id"] in everything
        for blank in ("principal", "since", "client_ip"):  # spaces only: no filter
            assert stored_ids(env, **{blank: "  "}) == everything


def stored_ids(env: Env, **params: str) -> list[str]:
    """The ids a page of up to 1000 gives, leaving out the reads' own audit events."""
    page = env.get("/api/v1/audit-logs", env.root, limit=1000, **params).json()
    return [r["id"] for r in page["records"] if r["type"] != AUDIT_LOG_VIEWED]
