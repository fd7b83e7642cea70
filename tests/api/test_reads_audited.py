"""Every read of the audit log is itself an audit event, durable before the data is
sent: who read (principal), what they asked (status), from where (client IP). A read
that cannot be recorded is refused."""

from __future__ import annotations

import base64
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from audit_middleware.catalogue import NAME_PATTERN
from collector.api import ApiSettings, create_app
from collector.api.reads import CATALOGUE
from collector.own_records import AUDIT_LOG_EXPORTED, AUDIT_LOG_VIEWED, SOURCE
from collector.query import find
from tests.api.conftest import PEER, Env


def status(record: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(record["status"])  # type: ignore[no-any-return]


def test_the_read_types_are_well_formed_app_defined_types() -> None:
    for kind in (AUDIT_LOG_VIEWED, AUDIT_LOG_EXPORTED):
        assert NAME_PATTERN.fullmatch(kind)
        assert CATALOGUE.check(kind) == kind
    assert CATALOGUE.event_type("audit_log", "view") == AUDIT_LOG_VIEWED


def test_a_page_view_is_recorded_with_reader_filters_and_client_ip(env: Env) -> None:
    page = env.get("/api/v1/audit-logs", env.root, type="run_*", principal="alice",
                   since="2026-11-25-00-00-00", limit=3).json()
    assert len(page["records"]) == 3
    [read] = env.read_events()
    assert read["type"] == AUDIT_LOG_VIEWED
    assert read["principal"] == "root-reader"
    assert read["client_ip"] == PEER
    assert read["target"] == "audit-logs"
    assert read["source"] == SOURCE
    assert status(read) == {"type": ["run_*"], "principal": "alice",
                            "since": "2026-11-25-00-00-00", "order": "newest", "limit": 3,
                            "returned": 3}


def test_each_page_is_a_read(env: Env) -> None:
    first = env.get("/api/v1/audit-logs", env.root, limit=100).json()
    env.get("/api/v1/audit-logs", env.root, limit=100, cursor=first["next_cursor"])
    reads = env.read_events()
    assert [status(r)["returned"] for r in reads] == [100, 20]
    assert "cursor" not in status(reads[0]) and status(reads[1])["cursor"] is True


def test_a_later_page_records_the_window_its_cursor_holds(env: Env) -> None:
    """A cursor carries its time window, which its request's filters do not show: the
    read's record says what was read, even with a cursor edited by hand to widen it."""
    since = "2026-11-25-00-00-00"
    first = env.get("/api/v1/audit-logs", env.root, since=since, limit=5).json()
    env.get("/api/v1/audit-logs", env.root, since=since, limit=5,
            cursor=first["next_cursor"])
    state = orjson.loads(base64.urlsafe_b64decode(first["next_cursor"] + "==="))
    state["a"] = 0  # from 1970 on, not from the filters' since
    forged = base64.urlsafe_b64encode(orjson.dumps(state)).decode().rstrip("=")
    env.get("/api/v1/audit-logs", env.root, since=since, limit=5, cursor=forged)
    first_read, second, edited = (status(r) for r in env.read_events())
    assert "window" not in first_read  # its filters say it
    assert second["window"] == ["2026-11-25T00:00:00.000000Z", None]
    assert edited["window"] == ["1970-01-01T00:00:00.000000Z", None]


def test_a_later_page_read_in_no_window_says_so(env: Env) -> None:
    """A cursor edited to hold exactly no bound (-2**62, 2**62) reads all of time while
    its query string still says since=...: the record must show the window that was
    applied ([null, null]), not leave it out so that only the since shows."""
    since = "2026-11-25-00-00-00"
    first = env.get("/api/v1/audit-logs", env.root, since=since, limit=5).json()
    state = orjson.loads(base64.urlsafe_b64decode(first["next_cursor"] + "==="))
    state["a"], state["b"] = -(2**62), 2**62
    forged = base64.urlsafe_b64encode(orjson.dumps(state)).decode().rstrip("=")
    env.get("/api/v1/audit-logs", env.root, since=since, limit=5, cursor=forged)
    plain = env.get("/api/v1/audit-logs", env.root, limit=100).json()
    env.get("/api/v1/audit-logs", env.root, limit=100, cursor=plain["next_cursor"])
    _, edited, _, untimed = (status(r) for r in env.read_events())
    assert edited["since"] == since and edited["window"] == [None, None]
    assert untimed["cursor"] is True and untimed["window"] == [None, None]


def test_a_read_is_stored_before_its_answer_is_sent(env: Env) -> None:
    env.get("/api/v1/audit-logs", env.root, limit=1)
    # Without waiting: the event is already durable and indexed when the answer arrives.
    [read] = env.read_events()
    assert find(env.store, read["id"]) == read


def test_a_lookup_is_recorded_with_the_event_id_as_target(env: Env) -> None:
    wanted = env.rows[7]["id"]
    env.get(f"/api/v1/audit-logs/{wanted}", env.root)
    env.get("/api/v1/audit-logs/019ac3f2-5e1a-7c3d-9a41-0f6d2b7e8c11", env.root)
    found, missing = env.read_events()
    assert (found["type"], found["target"], status(found)) == (AUDIT_LOG_VIEWED, wanted,
                                                              {"found": True})
    assert status(missing) == {"found": False}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_export_is_recorded_with_its_format_and_filters(env: Env, fmt: str) -> None:
    env.get(f"/api/v1/audit-logs/export.{fmt}", env.root, org="org-a", order="oldest")
    [read] = env.read_events()
    assert read["type"] == AUDIT_LOG_EXPORTED and read["principal"] == "root-reader"
    assert status(read) == {"format": fmt, "org": "org-a", "order": "oldest"}


def test_a_panel_session_is_recorded_as_its_reader(env: Env) -> None:
    env.client.post("/api/v1/session", json={"token": env.root})
    env.client.get("/api/v1/audit-logs")
    [read] = env.read_events()
    assert read["principal"] == "root-reader"


def test_a_rejected_query_is_not_a_read(env: Env) -> None:
    env.get("/api/v1/audit-logs", env.root, since="yesterday")
    assert env.read_events() == []


PADDING = [f"zz_{n:02d}_nothing_*" for n in range(60)]  # ORed globs: no other result


@pytest.mark.parametrize("path", ["/api/v1/audit-logs", "/api/v1/audit-logs/export.csv"])
def test_a_selection_its_record_cannot_hold_whole_is_refused(env: Env, path: str) -> None:
    """``status`` is cut at 1024 characters after its keys are sorted: types padded
    with globs that change nothing pushed the filters after them (type, until,
    workspace, window) past the cut, so the record hid filters that were applied."""
    for params in ({"type": ["run_*", *PADDING], "until": "2026-11-26-00-00-00",
                    "workspace": "ws-1"}, {"principal": "p" * 3000}):
        response = env.client.get(path, params=params,
                                  headers={"Authorization": f"Bearer {env.root}"})
        assert response.status_code == 400
        assert "narrow the selection" in response.json()["message"]
    assert env.read_events() == []  # nothing was read


def test_a_long_selection_that_fits_is_recorded_whole_on_every_page(env: Env) -> None:
    params = {"type": ["run_*", *PADDING[:25]], "until": "2026-11-26-00-00-00",
              "workspace": "ws-1", "limit": 1}
    headers = {"Authorization": f"Bearer {env.root}"}
    first = env.client.get("/api/v1/audit-logs", params=params, headers=headers).json()
    page = env.client.get("/api/v1/audit-logs", headers=headers,
                          params={**params, "cursor": first["next_cursor"]})
    assert page.status_code == 200
    for read in env.read_events():
        shown = status(read)  # whole JSON, not cut
        assert shown["type"] == ["run_*", *PADDING[:25]] and shown["workspace"] == "ws-1"
        assert shown["until"] == "2026-11-26-00-00-00"


def test_a_record_that_would_be_cut_refuses_its_read_even_past_the_check(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorder's own guard, should an endpoint ever miss the check: no data."""
    from collector.api import routes

    monkeypatch.setattr(routes, "_check_recordable", lambda sel, extras: None)
    response = env.get("/api/v1/audit-logs", env.root, type=["run_*", *PADDING])
    assert response.status_code == 503 and "records" not in response.json()
    assert env.read_events() == []


def test_a_head_request_is_refused_unread_and_unrecorded(env: Env) -> None:
    """Starlette answers HEAD with the GET endpoint, its body dropped: the query ran (an
    export streamed the whole selection to nobody) and was recorded as a read of what
    was never sent."""
    headers = {"Authorization": f"Bearer {env.root}"}
    for path in ("/api/v1/audit-logs", f"/api/v1/audit-logs/{env.rows[0]['id']}",
                 *(f"/api/v1/audit-logs/export.{ext}"
                   for ext in ("csv", "jsonl", "ocsf.jsonl", "ecs.jsonl"))):
        response = env.client.head(path, headers=headers)
        assert response.status_code == 405, path
        assert response.headers["allow"] == "GET", path
        assert env.client.get(path, headers=headers).status_code == 200, path
    assert [r["type"] for r in env.read_events()] == [AUDIT_LOG_VIEWED] * 2 + \
        [AUDIT_LOG_EXPORTED] * 4  # the GETs only
    refused = env.client.request("HEAD", "/api/v1/audit-logs")
    assert refused.status_code == 405  # nothing to learn without a token either


def test_a_refused_method_is_told_which_one_to_use(env: Env) -> None:
    response = env.get("/api/v1/sources/acknowledge-losses", env.root)
    assert response.status_code == 405
    assert response.json()["message"] == "GET is not served at this path: use POST"


class FailingStore:
    """A store whose writes fail, as when the disk is full."""

    def submit(self, events: list[dict[str, Any]], source: str = "") -> Future[Any]:
        future: Future[Any] = Future()
        future.set_exception(OSError(28, "No space left on device"))
        return future


def test_a_read_that_cannot_be_recorded_is_refused_without_data(env: Env,
                                                               tmp_path: Path) -> None:
    app = create_app(ApiSettings(data_dir=env.store.settings.data_dir), FailingStore(),
                     readers=env.readers)
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {env.root}"}
        for path in ("/api/v1/audit-logs", "/api/v1/audit-logs/export.csv",
                     f"/api/v1/audit-logs/{env.rows[0]['id']}"):
            response = client.get(path, headers=headers)
            assert response.status_code == 503, path
            assert set(response.json()) == {"error", "message"}
            assert "could not be recorded" in response.json()["message"]
            assert env.rows[0]["principal"] not in response.text
