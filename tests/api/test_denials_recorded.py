"""Refused attempts to read the audit logs are audit events too
(``audit_log_access_denied``): a wrong or revoked token, an ended session, a reader that
is not root, a sign-in posted from another site. A request without credentials is not
recorded. The token never reaches the record, and an attacker cannot flood the log: per
client IP and reason, one record a minute, the next saying how many attempts it covers;
over all clients, MAX_RECORDS a minute, then one record for the rest."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from collector.api import denials, server_guard, server_stop
from collector.api import server as api_server
from collector.api.context import Api
from collector.api.denials import Attempt, DenialLimiter
from collector.api.reads import CATALOGUE
from collector.own_records import AUDIT_LOG_ACCESS_DENIED
from collector.storage.segments import ActiveSegment
from tests.api.conftest import PEER, Env
from tests.api.served import closed_at_once
from tests.collector.storage_helpers import Hold
from tests.e2e.harness import host_and_port


def denied(env: Env) -> list[dict[str, Any]]:
    return [e for e in env.read_events() if e["type"] == AUDIT_LOG_ACCESS_DENIED]


def status(record: dict[str, Any]) -> dict[str, Any]:
    return orjson.loads(record["status"])  # type: ignore[no-any-return]


def test_the_denial_type_is_in_the_collectors_catalogue() -> None:
    assert CATALOGUE.event_type("audit_log", "deny") == AUDIT_LOG_ACCESS_DENIED


def test_every_reason_a_refusal_is_recorded_with_is_documented() -> None:
    """docs/api.md lists the reasons an investigator will find in these records."""
    root = Path(__file__).resolve().parents[2]
    source = "".join(path.read_text() for path in (root / "collector/api").glob("*.py"))
    reasons = set(re.findall(r'denied="([^"]+)"', source))
    assert {"invalid token", "not root", "session ended"} <= reasons  # the pattern holds
    [listed] = [line for line in (root / "docs/api.md").read_text().splitlines()
                if line.startswith("| `status` |") and "reasons:" in line]
    assert {r for r in reasons if f"`{r}`" not in listed} == set()


def test_a_wrong_token_is_recorded_without_the_token(env: Env) -> None:
    secret = "ac_0123456789abcdef_guessed-token-value"
    assert env.get("/api/v1/audit-logs", secret, type="run_*").status_code == 401
    [record] = denied(env)
    assert record["principal"] == "" and record["client_ip"] == PEER
    assert record["target"] == "/api/v1/audit-logs"
    assert status(record) == {"status": 401, "reason": "invalid token", "attempts": 1,
                              "method": "GET"}
    assert "guessed-token-value" not in orjson.dumps(env.read_events()).decode()


def test_a_reader_that_is_not_root_is_recorded_by_name(env: Env) -> None:
    assert env.get("/api/v1/audit-logs", env.plain).status_code == 403
    assert env.get("/api/v1/audit-logs/export", env.plain, format="csv").status_code == 403
    records = denied(env)
    assert [r["principal"] for r in records] == ["viewer"]  # rate limited: one a minute
    assert status(records[0])["reason"] == "not root"


def test_no_credentials_at_all_is_not_recorded(env: Env) -> None:
    assert env.get("/api/v1/audit-logs").status_code == 401
    assert env.get("/api/v1/session").status_code == 401  # a signed-out panel asking
    assert denied(env) == []


def test_a_sign_in_from_another_site_and_a_bad_sign_in_are_recorded(env: Env) -> None:
    foreign = env.client.post("/api/v1/session", json={"token": env.root},
                              headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    bad = env.client.post("/api/v1/session", json={"token": "nope"})
    assert bad.status_code == 401
    assert sorted(status(r)["reason"] for r in denied(env)) == [
        "invalid token", "sign-in from another origin"]
    assert env.root not in orjson.dumps(env.read_events()).decode()


def test_an_ended_session_is_recorded(env: Env) -> None:
    signed = env.client.post("/api/v1/session", json={"token": env.root})
    assert signed.status_code == 200
    env.readers.remove("root-reader")
    assert env.client.get("/api/v1/audit-logs").status_code == 401
    assert [status(r)["reason"] for r in denied(env)] == ["session ended"]


def test_repeated_attempts_are_one_record_a_minute_with_their_count() -> None:
    now = [1000.0]
    limiter = DenialLimiter(clock=lambda: now[0])
    assert limiter.admit(Attempt("198.51.100.7", "invalid token")) == 1
    assert [limiter.admit(Attempt("198.51.100.7", "invalid token")) for _ in range(5)] == [0] * 5
    assert limiter.admit(Attempt("198.51.100.8", "invalid token")) == 1  # another client
    assert limiter.admit(Attempt("198.51.100.7", "not root")) == 1  # another reason
    now[0] += denials.WINDOW
    assert limiter.admit(Attempt("198.51.100.7", "invalid token")) == 6  # it and the 5 counted


def test_the_table_of_recent_clients_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(denials, "MAX_KEYS", 3)
    limiter = DenialLimiter(clock=lambda: 0.0)
    for n in range(10):
        assert limiter.admit(Attempt(f"10.0.0.{n}", "invalid token")) == 1
    assert len(limiter._recent) == 3
    assert limiter.admit(Attempt("10.0.0.0", "invalid token")) == 1  # forgotten, so recorded again


def test_over_all_clients_a_window_writes_at_most_max_records_then_one_for_the_rest(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client changing address evades the per-address limit (all of 127.0.0.0/8 is
    local, an IPv6 host has a /64): without a budget over all clients, ten thousand
    addresses made ten thousand fsynced records in seconds."""
    monkeypatch.setattr(denials, "MAX_RECORDS", 2)
    now = [1000.0]
    env.client.app.state.api.denials = DenialLimiter(clock=lambda: now[0])  # type: ignore[attr-defined]

    def refused_from(ip: str) -> None:
        with TestClient(env.client.app, client=(ip, 1)) as client:
            reply = client.get("/api/v1/audit-logs",
                               headers={"Authorization": "Bearer ac_0123456789abcdef_x"})
        assert reply.status_code == 401  # refused either way; only the record is spared

    for n in range(5):
        refused_from(f"127.0.0.{n + 1}")
    assert [r["client_ip"] for r in denied(env)] == ["127.0.0.1", "127.0.0.2"]
    now[0] += denials.WINDOW
    refused_from("127.0.0.9")
    *_, many, last = denied(env)
    assert (many["target"], many["client_ip"], many["principal"]) == ("(many)", "", "")
    assert status(many) == {"reason": "too many refusals to record one by one",
                            "attempts": 3, "clients": 3}
    assert last["client_ip"] == "127.0.0.9" and status(last)["attempts"] == 1
    assert len(denied(env)) == 4


def test_the_budget_reports_what_it_did_not_record_once_its_window_is_over(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(denials, "MAX_RECORDS", 3)
    now = [0.0]
    limiter = DenialLimiter(clock=lambda: now[0])
    assert [limiter.admit(Attempt(f"10.0.0.{n}", "invalid token")) for n in range(10)] == [1] * 3 + [0] * 7
    assert limiter.unrecorded() == []  # still the window that overflowed
    now[0] += denials.WINDOW
    assert limiter.unrecorded() == [denials.Unrecorded(attempts=7, clients=7)]
    assert limiter.unrecorded() == []  # reported once
    assert limiter.admit(Attempt("10.0.0.1", "invalid token")) == 1  # the budget has room again


def test_a_flood_that_stops_is_reported_without_another_refusal(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server asks every second (and at shutdown): the record of what the budget
    left out must not wait for a refusal that may never come."""
    monkeypatch.setattr(denials, "MAX_RECORDS", 1)
    api = env.client.app.state.api  # type: ignore[attr-defined]
    for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        with TestClient(env.client.app, client=(ip, 1)) as client:
            client.get("/api/v1/audit-logs", headers={"Authorization": "Bearer ac_0_x"})
    assert len(denied(env)) == 1
    asyncio.run(api.report_unrecorded())  # the window is not over: nothing yet
    assert len(denied(env)) == 1
    asyncio.run(api.report_unrecorded(now=True))  # at shutdown
    assert status(denied(env)[-1])["attempts"] == 2


def test_the_api_server_asks_for_that_record_every_pass_and_at_shutdown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_guard, "GUARD_INTERVAL", 0.05)
    asked: list[bool] = []

    async def report_unrecorded(*, now: bool = False) -> None:
        asked.append(now)

    app = Starlette()
    app.state.api = SimpleNamespace(report_unrecorded=report_unrecorded, aclose=closed_at_once)

    async def main() -> None:
        server = api_server.ApiServer(app, "127.0.0.1", 0)
        await server.start()
        await asyncio.sleep(0.3)
        await server.shutdown()

    asyncio.run(main())
    assert asked[:3] == [False] * 3 and asked[-1] is True


def test_a_stop_on_a_hung_disk_goes_on_and_says_how_many_attempts_went_unrecorded(
        env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """At the stop the attempts held back are written at once; a hung fsync held that
    write, and the stop, for good. Now it is bounded by what is left of
    ``drain_timeout``, and the log says how many attempts went unrecorded."""
    monkeypatch.setattr(denials, "MAX_RECORDS", 1)
    for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        with TestClient(env.client.app, client=(ip, 1)) as client:
            client.get("/api/v1/audit-logs", headers={"Authorization": "Bearer ac_0_x"})
    assert len(denied(env)) == 1  # the other two held back by the budget
    hung = Hold(monkeypatch, ActiveSegment, "sync")

    async def stop() -> None:
        server = api_server.ApiServer(env.client.app, "127.0.0.1", 0, drain_timeout=0.2)
        await server.start()
        # A bound on a failure (before the fix: never), not a timing.
        await asyncio.wait_for(server.shutdown(), HUNG_STOP_BOUND)

    try:
        asyncio.run(stop())
        assert hung.entered.is_set()  # the write was under way, its fsync hung
    finally:
        hung.release()  # the store's close waits for its commit thread
    assert "2 refused attempts held back by the denials' rate limit were not recorded" \
        in caplog.text


#: Seconds a stop on a hung disk may take here before the test fails.
HUNG_STOP_BOUND = 20


def test_the_guard_keeps_its_deadlines_while_that_record_hangs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard awaited each pass's record of the attempts held back: on a hung disk
    its write never ended, and from then on no idle connection was closed at its
    deadline and no limit kept. The record is written beside the guard now, one at a
    time, and the stop waits for it within its bound."""
    monkeypatch.setattr(server_guard, "GUARD_INTERVAL", 0.05)
    monkeypatch.setattr(server_guard, "HEADER_TIMEOUT", 0.2)
    asked: list[bool] = []
    never = asyncio.Event()

    async def report_unrecorded(*, now: bool = False) -> None:
        asked.append(now)
        if not now:
            await never.wait()  # the write a hung fsync holds

    app = Starlette()
    app.state.api = SimpleNamespace(report_unrecorded=report_unrecorded, aclose=closed_at_once)

    async def main() -> bytes:
        server = api_server.ApiServer(app, "127.0.0.1", 0, drain_timeout=0.2)
        await server.start()
        reader, writer = await asyncio.open_connection(*host_and_port(server.url))
        try:  # an idle connection: closed by the guard past HEADER_TIMEOUT
            return await asyncio.wait_for(reader.read(), HUNG_STOP_BOUND)
        finally:
            writer.close()
            await asyncio.wait_for(server.shutdown(), HUNG_STOP_BOUND)

    assert asyncio.run(main()) == b""
    assert asked == [False, True]  # one record under way at a time; the stop's own


def test_a_refusal_naming_a_reader_is_outside_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Anonymous clients using up the budget must not hide a named reader's 403."""
    monkeypatch.setattr(denials, "MAX_RECORDS", 2)
    limiter = DenialLimiter(clock=lambda: 0.0)
    assert [limiter.admit(Attempt(f"10.0.0.{n}", "invalid token")) for n in range(4)] == [1, 1, 0, 0]
    assert limiter.admit(Attempt("10.0.0.9", "not root", reader="viewer")) == 1
    assert limiter.admit(Attempt("10.0.0.9", "not root", reader="viewer")) == 0  # once a minute


def test_a_reader_refused_from_many_addresses_has_a_budget_of_its_own(env: Env) -> None:
    """A reader's token that is not root (the metrics scraper's) is enough to be
    refused, outside the anonymous budget, and a local user has all of 127.0.0.0/8:
    one address per request wrote an fsynced record per request. Over all its
    addresses a reader gets MAX_READER_RECORDS a window, then one record for the rest,
    naming it."""
    now = [1000.0]
    api = env.client.app.state.api  # type: ignore[attr-defined]
    api.denials = DenialLimiter(clock=lambda: now[0])
    extra = 15
    for n in range(denials.MAX_READER_RECORDS + extra):
        with TestClient(env.client.app, client=(f"127.0.{n}.1", 1)) as client:
            reply = client.get("/api/v1/audit-logs",
                               headers={"Authorization": f"Bearer {env.plain}"})
        assert reply.status_code == 403  # refused either way; only the record is spared
    assert len(denied(env)) == denials.MAX_READER_RECORDS
    assert {r["principal"] for r in denied(env)} == {"viewer"}
    # Anonymous clients' budget is untouched by it (and cannot hide it either).
    assert env.get("/api/v1/audit-logs", "ac_0123456789abcdef_x").status_code == 401
    assert len(denied(env)) == denials.MAX_READER_RECORDS + 1
    now[0] += denials.WINDOW
    asyncio.run(api.report_unrecorded())
    many = denied(env)[-1]
    assert (many["principal"], many["target"], many["client_ip"]) == ("viewer", "(many)", "")
    assert status(many) == {"reason": "too many refusals to record one by one",
                            "attempts": extra, "clients": extra}
    asyncio.run(api.report_unrecorded(now=True))
    assert len(denied(env)) == denials.MAX_READER_RECORDS + 2  # reported once


def test_each_reader_is_counted_apart_even_from_one_address() -> None:
    """Two readers refused from one address (every local user is 127.0.0.1) are two
    records: one reader's attempts are never counted in another's."""
    limiter = DenialLimiter(clock=lambda: 0.0)
    assert limiter.admit(Attempt("127.0.0.1", "not root", reader="scraper")) == 1
    assert limiter.admit(Attempt("127.0.0.1", "not root", reader="viewer")) == 1
    assert limiter.admit(Attempt("127.0.0.1", "not root", reader="viewer")) == 0


def test_what_the_budget_could_not_record_is_kept_when_its_record_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(denials, "MAX_RECORDS", 1)
    limiter = DenialLimiter(clock=lambda: 0.0)
    for n in range(4):
        limiter.admit(Attempt(f"10.0.0.{n}", "invalid token"))
    [report] = limiter.unrecorded(now=True)
    assert report == denials.Unrecorded(attempts=3, clients=3)
    limiter.give_back(report)  # the store refused the record
    limiter.admit(Attempt("10.0.0.7", "invalid token"))
    assert limiter.unrecorded(now=True) == [denials.Unrecorded(attempts=4, clients=4)]


def clocked(env: Env) -> tuple[Api, list[float]]:
    """The env's API with a denials limiter on a clock the test moves."""
    now = [1000.0]
    api: Api = env.client.app.state.api  # type: ignore[attr-defined]
    api.denials = DenialLimiter(clock=lambda: now[0])
    return api, now


def refused(env: Env, ip: str, path: str = "/api/v1/audit-logs") -> None:
    with TestClient(env.client.app, client=(ip, 1)) as client:
        reply = client.get(path, headers={"Authorization": "Bearer ac_0123456789abcdef_x"})
    assert reply.status_code == 401


def test_attempts_counted_after_a_record_are_written_once_its_window_is_over(
        env: Env) -> None:
    """Repeated refusals of one client only add to a count, written with the client's
    next refusal after the window: one that does not come back was never reported.
    The server's tick (report_unrecorded, every second) writes it once the window is
    over, with the latest attempt's path."""
    api, now = clocked(env)
    refused(env, PEER)
    refused(env, PEER)
    refused(env, PEER, "/api/v1/event-types")
    asyncio.run(api.report_unrecorded())  # the window is not over: nothing yet
    [first] = denied(env)
    now[0] += denials.WINDOW
    asyncio.run(api.report_unrecorded())
    first_again, counted = denied(env)
    assert first_again == first and status(first)["attempts"] == 1
    assert (counted["client_ip"], counted["target"]) == (PEER, "/api/v1/event-types")
    assert status(counted) == {"status": 401, "reason": "invalid token", "attempts": 2,
                               "method": "GET"}
    asyncio.run(api.report_unrecorded())
    assert len(denied(env)) == 2  # written once
    refused(env, PEER)  # within the window of that record: counted, as any other
    assert len(denied(env)) == 2


def test_attempts_counted_are_written_at_shutdown(env: Env) -> None:
    api, _ = clocked(env)
    for _ in range(4):
        refused(env, PEER)
    asyncio.run(api.report_unrecorded(now=True))  # what ApiServer.shutdown asks
    assert [status(r)["attempts"] for r in denied(env)] == [1, 3]


def test_a_client_the_full_table_forgets_hands_its_count_to_the_report(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(denials, "MAX_KEYS", 2)
    api, _ = clocked(env)
    for _ in range(3):
        refused(env, "198.51.100.1")
    refused(env, "198.51.100.2")
    refused(env, "198.51.100.3")  # the table is full: 198.51.100.1 is forgotten
    asyncio.run(api.report_unrecorded(now=True))
    [many] = [r for r in denied(env) if r["target"] == "(many)"]
    assert status(many) == {"reason": "too many refusals to record one by one",
                            "attempts": 2, "clients": 1}
    assert len(denied(env)) == 4  # one record for each client, and that one


def test_the_count_of_a_client_is_kept_when_its_record_fails() -> None:
    now = [0.0]
    limiter = DenialLimiter(clock=lambda: now[0])
    for _ in range(3):
        limiter.admit(Attempt("10.0.0.1", "invalid token"))
    now[0] += denials.WINDOW
    [report] = limiter.unrecorded()
    assert report == denials.Refusals(Attempt("10.0.0.1", "invalid token"), 2)
    limiter.give_back(report)  # the store refused the record: the budget's report has it
    assert limiter.unrecorded() == [denials.Unrecorded(attempts=2, clients=1)]


def test_an_ipv6_client_counts_by_its_slash_64() -> None:
    limiter = DenialLimiter(clock=lambda: 0.0)
    assert limiter.admit(Attempt("2001:db8:0:7::1", "invalid token")) == 1
    assert limiter.admit(Attempt("2001:db8:0:7:ffff::2", "invalid token")) == 0  # the same /64
    assert limiter.admit(Attempt("2001:db8:0:8::1", "invalid token")) == 1
    assert denials.client_key("not an address:") == "not an address:"
    # IPv4 clients through a dual-stack socket or NAT64 count one by one, not as one /64.
    assert denials.client_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert denials.client_key("64:ff9b::c633:6407") == "198.51.100.7"
    assert limiter.admit(Attempt("::ffff:203.0.113.9", "invalid token")) == 1
    assert limiter.admit(Attempt("::ffff:203.0.113.10", "invalid token")) == 1


def test_a_refusal_that_cannot_be_recorded_is_still_answered_and_logged(
        env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(self: Api, request: Any, exc: Any) -> None:
        raise RuntimeError("the store is gone")

    monkeypatch.setattr(Api, "record_denial", broken)
    reply = env.get("/api/v1/audit-logs", "ac_0123456789abcdef_wrong")
    assert reply.status_code == 401 and reply.json()["error"] == "unauthorized"
    assert "GET '/api/v1/audit-logs' could not be recorded" in caplog.text
    assert denied(env) == []



def test_a_path_logged_for_an_unrecorded_refusal_cannot_forge_log_lines(
        env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # The path is the client's, percent-decoded by the server: raw in the log, its
    # controls (an ANSI escape that erases the line on a terminal, a U+2028 that a viewer
    # breaks the line at) forge what the operator reads. Called as a server calls the
    # app (a test client's URL handling drops some controls before they reach it).
    async def broken(self: Api, request: Any, exc: Any) -> None:
        raise RuntimeError("the store is gone")

    monkeypatch.setattr(Api, "record_denial", broken)
    path = "/api/v1/audit-logs/x\x1b[2K\rCRITICAL forged\u2028line"
    answer: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        answer.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("203.0.113.9", 5000),
             "server": ("127.0.0.1", 8080), "app": env.client.app,
             "headers": [(b"host", b"127.0.0.1:8080"),
                         (b"authorization", b"Bearer ac_0123456789abcdef_wrong")]}
    asyncio.run(env.client.app(scope, receive, send))
    assert answer[0]["status"] == 401
    [record] = [r for r in caplog.records if "could not be recorded" in r.getMessage()]
    message = record.getMessage()
    assert not any(c in message for c in "\x1b\r\n\u2028")
    assert "CRITICAL forged" in message  # still said, escaped


def test_the_stop_writes_what_the_guards_unfinished_record_gave_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard's record still under way at the stop is cancelled, and gives the
    attempts it held back to the limiter (``Api.report_unrecorded``) once it has run
    its cancellation. The stop's own record took what the limiter held before that
    ran: the attempts given back were never written, and no log line said so."""
    monkeypatch.setattr(server_guard, "GUARD_INTERVAL", 0.05)
    monkeypatch.setattr(server_stop, "DENIALS_END_WAIT", 0.05)  # the bound, not a timing
    held = ["attempt 1", "attempt 2"]  # what the limiter holds back
    written: list[str] = []
    taken = asyncio.Event()
    never = asyncio.Event()

    async def report_unrecorded(*, now: bool = False) -> None:
        # As ``Api.report_unrecorded``: what is taken and not written is given back.
        reports = list(held)
        held.clear()
        try:
            if not now:
                taken.set()
                await never.wait()  # the guard's write, held by a disk
            written.extend(reports)
        except BaseException:
            held.extend(reports)
            raise

    app = Starlette()
    app.state.api = SimpleNamespace(report_unrecorded=report_unrecorded, aclose=closed_at_once)

    async def main() -> None:
        server = api_server.ApiServer(app, "127.0.0.1", 0, drain_timeout=0.01)
        await server.start()
        await asyncio.wait_for(taken.wait(), HUNG_STOP_BOUND)
        await asyncio.wait_for(server.shutdown(), HUNG_STOP_BOUND)

    asyncio.run(main())
    assert written == ["attempt 1", "attempt 2"] and held == []
