"""GET /api/v1/audit-logs and /api/v1/audit-logs/{id}: the filters of `audit-collector
query`, newest first, cursor pages that stay stable while events arrive, one event by
id with its trace link."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from audit_middleware.event import format_created, seed_date
from collector.api import ApiSettings, create_app
from collector.api.app import INDEX_UNAVAILABLE_MESSAGE
from collector.api.reads import CATALOGUE
from collector.api.routes import MAX_LISTED_TYPES
from collector.index import CATCHING_UP, Index
from tests.api.conftest import COUNT, HOUR, SPAN, TRACE, Env, corpus
from tests.collector.storage_helpers import BASE_NS, event
from tests.integrity.helpers import build_store

ROWS = corpus()  # the same values as the env's store holds (ids differ)


def expected(**want: Any) -> list[int]:
    """Positions of the matching corpus rows, newest first (any listed value matches)."""
    return [n for n in range(COUNT - 1, -1, -1)
            if all(ROWS[n][k] in (v if isinstance(v, tuple) else (v,)) for k, v in want.items())]


def every_page(env: Env, **params: Any) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = env.get("/api/v1/audit-logs", env.root, **params,
                       **({"cursor": cursor} if cursor else {})).json()
        records += page["records"]
        cursor = page["next_cursor"]
        if cursor is None:
            return records


def at(n: int) -> str:
    return format_created(BASE_NS + n * HOUR * 2 // 5)


def test_a_page_is_newest_first_with_a_cursor_to_the_next(env: Env) -> None:
    page = env.get("/api/v1/audit-logs", env.root, limit=10).json()
    assert page["limit"] == 10
    assert [r["id"] for r in page["records"]] == [r["id"] for r in env.rows[::-1][:10]]
    assert page["next_cursor"]


def test_oldest_first_on_request(env: Env) -> None:
    page = env.get("/api/v1/audit-logs", env.root, limit=5, order="oldest").json()
    assert [r["id"] for r in page["records"]] == [r["id"] for r in env.rows[:5]]


def test_records_come_back_as_stored(env: Env) -> None:
    record = env.get("/api/v1/audit-logs", env.root, limit=1).json()["records"][0]
    stored = env.rows[-1]
    assert {k: record[k] for k in stored} == stored
    assert record["seq"] == COUNT  # the storage fields follow


@pytest.mark.parametrize(("params", "want"), [
    ({"type": "run_*"}, expected(type=("run_launched", "run_completed"))),
    ({"type": "user_sign_in,credentials_created"},
     expected(type=("user_sign_in", "credentials_created"))),
    ({"principal": "system"}, expected(principal="system")),
    ({"target": "t-3"}, expected(target="t-3")),
    ({"org": "org-a", "principal": "alice"}, expected(org_id="org-a", principal="alice")),
    ({"workspace": "ws-3"}, expected(workspace_id="ws-3")),
    ({"client_ip": "10.1.0.0/16"}, expected(client_ip=("10.1.2.3", "10.1.200.9"))),
    ({"client_ip": "2001:db8::/32"}, expected(client_ip="2001:db8::17")),
    ({"client_ip": "192.168.0.5"}, expected(client_ip="192.168.0.5")),
])
def test_filters(env: Env, params: dict[str, str], want: list[int]) -> None:
    got = [r["id"] for r in every_page(env, limit=7, **params)]
    assert want and got == [env.rows[n]["id"] for n in want]


def test_repeated_type_parameters_mean_any_of_them(env: Env) -> None:
    response = env.client.get("/api/v1/audit-logs?type=run_launched&type=user_sign_in&limit=1000",
                              headers={"Authorization": f"Bearer {env.root}"})
    assert {r["type"] for r in response.json()["records"]} == {"run_launched", "user_sign_in"}


@pytest.mark.parametrize("form", ["rfc3339", "seed"])
def test_a_time_range_in_either_form(env: Env, form: str) -> None:
    since, until = at(10), at(20)  # events 10..19
    if form == "seed":  # whole seconds: the events are on whole minutes
        since, until = seed_date(since), seed_date(until)
    got = every_page(env, since=since, until=until, limit=4)
    assert [r["id"] for r in got] == [r["id"] for r in env.rows[10:20]][::-1]


def test_empty_parameters_mean_no_filter(env: Env) -> None:
    got = env.get("/api/v1/audit-logs", env.root, principal="", type="", limit=1000).json()
    assert len(got["records"]) == COUNT


def test_a_filter_that_matches_nothing_is_an_empty_page(env: Env) -> None:
    page = env.get("/api/v1/audit-logs", env.root, principal="nobody").json()
    assert page == {"records": [], "next_cursor": None, "limit": 50}


def test_paging_stays_stable_while_new_events_arrive(env: Env) -> None:
    seen: list[str] = []
    page = env.get("/api/v1/audit-logs", env.root, limit=25).json()
    n = COUNT
    while True:
        seen += [r["id"] for r in page["records"]]
        # New events land between every two pages, newer than everything paged so far.
        env.store.write([event(created_ns=BASE_NS + (n + i) * HOUR) for i in range(10)])
        n += 10
        if page["next_cursor"] is None:
            break
        page = env.get("/api/v1/audit-logs", env.root, limit=25,
                       cursor=page["next_cursor"]).json()
    assert seen == [r["id"] for r in env.rows[::-1]]  # no repeat, no gap, no newcomer


def test_a_relative_time_range_pages_like_any_other(env: Env) -> None:
    fresh = [event(created_ns=time.time_ns() - i * 10**9) for i in range(6)]
    env.store.write(fresh)
    first = env.get("/api/v1/audit-logs", env.root, since="1h", limit=4,
                    type="credentials_created", principal="user-1").json()
    rest = env.get("/api/v1/audit-logs", env.root, since="1h", limit=4,
                   type="credentials_created", principal="user-1",
                   cursor=first["next_cursor"]).json()
    # Newest first by arrival: the batch's last event first.
    assert [r["id"] for r in first["records"] + rest["records"]] == [r["id"] for r in fresh][::-1]
    ages = env.get("/api/v1/audit-logs", env.root, since="999999999w", limit=1000,
                   type="credentials_created", principal="user-1")  # before year 1: a 500
    assert ages.status_code == 200 and len(ages.json()["records"]) >= len(fresh)


@pytest.mark.parametrize(("params", "message"), [
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"order": "sideways"}, "order"),
    ({"principle": "alice"}, "unknown parameter"),
    ({"since": "yesterday"}, "is not a time"),
    ({"since": "2026-11-27T12:00:00Z", "until": "2026-11-26T12:00:00Z"}, "is after until"),
    ({"client_ip": "10.0.0.0/33"}, "CIDR"),
    ({"type": "Run Launched"}, "not an event type"),
    ({"cursor": "garbage"}, "cursor"),
])
def test_bad_parameters_are_400_saying_what_is_accepted(env: Env, params: dict[str, str],
                                                          message: str) -> None:
    response = env.get("/api/v1/audit-logs", env.root, **params)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert message in response.json()["message"]


@pytest.mark.parametrize("limit", ["1" * 4301, "0" * 4300 + "5", "10000"])
def test_a_limit_of_too_many_digits_is_400_not_500(env: Env, limit: str) -> None:
    """Python's int() refuses more than 4,300 digits (ValueError, a 500 here): the
    length is checked first."""
    with TestClient(env.client.app, raise_server_exceptions=False) as client:
        response = client.get("/api/v1/audit-logs", params={"limit": limit},
                              headers={"Authorization": f"Bearer {env.root}"})
    assert response.status_code == 400
    assert response.json()["message"].startswith("limit=")


def test_a_parameter_given_twice_is_400(env: Env) -> None:
    response = env.client.get("/api/v1/audit-logs?principal=a&principal=b",
                              headers={"Authorization": f"Bearer {env.root}"})
    assert response.status_code == 400 and "more than once" in response.json()["message"]


def test_a_cursor_of_another_query_is_400(env: Env) -> None:
    cursor = env.get("/api/v1/audit-logs", env.root, limit=2).json()["next_cursor"]
    response = env.get("/api/v1/audit-logs", env.root, limit=2, principal="alice",
                       cursor=cursor)
    assert response.status_code == 400 and "another query" in response.json()["message"]


# -- one event ----------------------------------------------------------------------------
def test_one_event_by_id_with_a_link_to_its_trace(env: Env) -> None:
    traced = env.rows[3]
    body = env.get(f"/api/v1/audit-logs/{traced['id']}", env.root).json()
    assert body["record"]["id"] == traced["id"] and body["record"]["span_id"] == SPAN
    assert body["trace_url"] == f"https://traces.example/trace/{TRACE}"


def test_an_event_without_a_trace_has_no_link(env: Env) -> None:
    body = env.get(f"/api/v1/audit-logs/{env.rows[4]['id']}", env.root).json()
    assert body["trace_url"] is None


def test_no_trace_link_without_a_template(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.api.conftest import make_env

    for plain in make_env(tmp_path / "data"):
        body = plain.get(f"/api/v1/audit-logs/{plain.rows[3]['id']}", plain.root).json()
        assert body["record"]["trace_id"] == TRACE and body["trace_url"] is None


def test_an_unknown_id_is_404(env: Env) -> None:
    response = env.get("/api/v1/audit-logs/019ac3f2-5e1a-7c3d-9a41-0f6d2b7e8c11", env.root)
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_a_malformed_id_is_400(env: Env) -> None:
    response = env.get("/api/v1/audit-logs/..%2F..%2Fetc", env.root)
    assert response.status_code in (400, 404)
    response = env.get("/api/v1/audit-logs/NOT-A-UUID", env.root)
    assert response.status_code == 400 and "UUID" in response.json()["message"]


def _index_in(data: Path, state: str) -> None:
    """A data directory whose index is ``state``: missing, empty (what a rebuild shows
    for a moment), or being brought up to date (a start-up repair under way)."""
    if state == "being brought up to date":
        build_store(data, batches=1)
        index = Index(data / "index.sqlite")
        index.set_meta(CATCHING_UP, "1 segment file(s) to index")
        index.close()
        return
    data.mkdir()
    if state == "empty":
        (data / "index.sqlite").write_bytes(b"")


@pytest.mark.parametrize("state", ["missing", "empty", "being brought up to date"])
def test_an_index_that_cannot_answer_is_503_saying_what_to_do_without_its_path(
        env: Env, tmp_path: Path, state: str) -> None:
    """The data directory's state, not the request's fault: a missing or half-built
    index was a 400 "bad request" quoting the data directory's path. Now 503, saying to
    retry or have an operator reindex; the path goes to the collector's log only."""
    data = tmp_path / "served"
    _index_in(data, state)
    app = create_app(ApiSettings(data_dir=data), env.store, readers=env.readers)
    with TestClient(app) as client:
        for path in ("/api/v1/audit-logs", "/api/v1/audit-logs/export.csv",
                     f"/api/v1/audit-logs/{env.rows[0]['id']}", "/api/v1/event-types"):
            response = client.get(path, headers={"Authorization": f"Bearer {env.root}"})
            assert response.status_code == 503, (path, response.text)
            assert response.json() == {"error": "unavailable",
                                       "message": INDEX_UNAVAILABLE_MESSAGE}
            assert str(tmp_path) not in response.text
    assert env.read_events() == []  # nothing was read: no read recorded


def test_event_types_lists_the_catalogue_and_what_is_stored(env: Env) -> None:
    types = env.get("/api/v1/event-types", env.root).json()["types"]
    assert {"run_launched", "audit_log_viewed", "audit_log_exported", "workspace_deleted"} <= set(types)
    assert types == sorted(types)


def test_event_types_lists_at_most_so_many_stored_types(env: Env) -> None:
    """An app that stores a type per event made the list (the panel's suggestions) as
    long as the store: the catalogue's types and the first MAX_LISTED_TYPES stored."""
    assert env.get("/api/v1/event-types", env.root).json()["truncated"] is False
    env.store.write([event(type=f"a_flood_{n:05d}") for n in range(MAX_LISTED_TYPES + 50)])
    body = env.get("/api/v1/event-types", env.root).json()
    stored = {t for t in body["types"] if t not in CATALOGUE.types}
    assert len(stored) == MAX_LISTED_TYPES and body["truncated"] is True
    assert CATALOGUE.types <= set(body["types"]) and body["types"] == sorted(body["types"])


def test_event_types_of_a_prefix_reach_past_a_flood_of_types(env: Env) -> None:
    """A flood of stored types sorting first hid every later one from the suggestions
    (``zz_last`` here): the types beginning with a prefix are listed on their own,
    the catalogue's too, and ``truncated`` is about those."""
    env.store.write([event(type=f"a_flood_{n:05d}") for n in range(MAX_LISTED_TYPES + 50)]
                    + [event(type="zz_last"), event(type="zz_later_2")])
    assert "zz_last" not in env.get("/api/v1/event-types", env.root).json()["types"]
    body = env.get("/api/v1/event-types", env.root, prefix="zz").json()
    assert body == {"types": ["zz_last", "zz_later_2"], "truncated": False}
    runs = env.get("/api/v1/event-types", env.root, prefix="run_").json()["types"]
    assert runs and set(runs) == {t for t in CATALOGUE.types if t.startswith("run_")}
    flood = env.get("/api/v1/event-types", env.root, prefix="a_flood_").json()
    assert len(flood["types"]) == MAX_LISTED_TYPES and flood["truncated"] is True
    assert env.get("/api/v1/event-types", env.root, prefix="").json()["truncated"] is True
    assert env.get("/api/v1/event-types", env.root, prefix="nothing_").json() == {
        "types": [], "truncated": False}


@pytest.mark.parametrize(("params", "says"), [
    ({"prefix": "a" * 65}, "at most 64"),
    ({"prefix": ["a", "b"]}, "more than once"),
    ({"type": "run_*"}, "unknown parameter(s) type: use prefix"),
])
def test_event_types_refuses_what_it_cannot_use(
        env: Env, params: dict[str, Any], says: str) -> None:
    response = env.get("/api/v1/event-types", env.root, **params)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_request" and says in response.json()["message"]


def test_a_fifo_in_place_of_a_segment_file_is_a_503_and_a_log_line_for_the_operator(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """Answered 500 "internal", its traceback in the log ending in the command's words:
    "... run this again (... `audit-collector reindex`, the collector stopped ...)",
    meaningless in the collector's own log. Now a 503 (the store's state, as a damaged
    segment's) naming the file, and a log line naming its path and what an operator
    does for the running collector."""
    segment = min((env.store.settings.data_dir / "segments").glob("segment-*"))
    segment.unlink()
    os.mkfifo(segment)
    with caplog.at_level(logging.ERROR, logger="collector.api"):
        reply = env.get("/api/v1/audit-logs", env.root, limit=10, order="oldest")
    assert reply.status_code == 503, reply.text
    assert reply.json() == {"error": "unavailable", "message": (
        f"the segment file {segment.name} of the collector's store cannot be read: "
        f"something else is in its place. An operator must move it out of the way and "
        f"put the segment file back (the collector's log says how); try again then")}
    [line] = [r.getMessage() for r in caplog.records if r.name == "collector.api"]
    assert line == (
        f"query API: GET '/api/v1/audit-logs': {segment} is a FIFO, where the collector "
        f"keeps a segment file (stored records): look at what it is, move it out of the "
        f"way (`mv {segment} {segment}.aside`), then put the segment file back from a "
        f"backup and the running collector reads it at its next request and its "
        f"forwarder's next retry, with no restart (without a backup its records are "
        f"lost: once the file is moved away, queries answer and the forwarder goes on "
        f"without them, and `audit-collector verify` names the segment missing)"), line
    assert not caplog.records[0].exc_info  # an expected state, not a fault's traceback


@pytest.mark.parametrize("name", ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"])
def test_a_fifo_in_place_of_an_index_file_is_a_503_and_a_log_line_for_the_operator(
        env: Env, caplog: pytest.LogCaptureFixture, name: str) -> None:
    """Answered 500 "internal", a traceback in the log ending in the command's words
    ("... rebuilt ... at the collector's next start"). Now the index's 503, counted as
    ``queries_refused_index``, and a log line saying what an operator does for the
    running collector, whose writer still holds the file that was there."""
    data = env.store.settings.data_dir
    part = data / name
    aside = data / f"{name}.kept"  # the writer's own file, put back for its close
    if part.exists():
        os.link(part, aside)
        part.unlink()
    os.mkfifo(part)
    try:
        with caplog.at_level(logging.ERROR, logger="collector.api"):
            reply = env.get("/api/v1/audit-logs", env.root, limit=10)
    finally:
        part.unlink()
        if aside.exists():
            os.rename(aside, part)
    assert reply.status_code == 503, reply.text
    assert reply.json() == {"error": "unavailable", "message": INDEX_UNAVAILABLE_MESSAGE}
    assert env.client.app.state.api.unavailable["queries_refused_index"] == 1
    [record] = [r for r in caplog.records if r.name == "collector.api"]
    assert not record.exc_info  # an expected state, not a fault's traceback
    line = record.getMessage()
    assert line.startswith(f"query API: {part} is a FIFO, where the collector keeps "), line
    assert f"(`mv {part} {part}.aside`), then restart the collector: its start rebuilds " \
        f"the index from the segments" in line, line
    assert "no record is lost" in line and "Traceback" not in caplog.text, line
