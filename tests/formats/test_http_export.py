"""The HTTP export in the SIEM formats: GET /api/v1/audit-logs/export.ocsf.jsonl and
export.ecs.jsonl, root only, filtered like the other exports, every line valid."""

from __future__ import annotations

import orjson

from tests.api.conftest import Env, env  # noqa: F401 - the API fixture over a real Store
from tests.formats.conformance import ecs_problems, ocsf_problems


def lines(reply) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    return [orjson.loads(line) for line in reply.text.splitlines()]


def test_the_ocsf_export_streams_valid_ocsf_events(env: Env) -> None:  # noqa: F811
    reply = env.get("/api/v1/audit-logs/export.ocsf.jsonl", env.root)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/x-ndjson")
    assert reply.headers["content-disposition"].endswith('.ocsf.jsonl"')
    events = lines(reply)
    assert len(events) == len(env.rows)
    assert {e["class_uid"] for e in events} == {6003, 3002}
    assert all(ocsf_problems(e) == [] for e in events)  # type: ignore[arg-type]


def test_the_ecs_export_applies_the_filters(env: Env) -> None:  # noqa: F811
    reply = env.get("/api/v1/audit-logs/export.ecs.jsonl", env.root, type="user_sign_in")
    docs = lines(reply)
    assert docs and {d["event"]["action"] for d in docs} == {"user_sign_in"}  # type: ignore[index]
    assert all(ecs_problems(d) == [] for d in docs)  # type: ignore[arg-type]


def test_the_siem_exports_are_for_root_readers_only(env: Env) -> None:  # noqa: F811
    for path in ("/api/v1/audit-logs/export.ocsf.jsonl", "/api/v1/audit-logs/export.ecs.jsonl"):
        assert env.get(path).status_code == 401
        assert env.get(path, env.plain).status_code == 403


def test_an_export_is_recorded_with_its_format(env: Env) -> None:  # noqa: F811
    env.get("/api/v1/audit-logs/export.ecs.jsonl", env.root)
    (read,) = [e for e in env.read_events() if e["type"] == "audit_log_exported"]
    assert orjson.loads(read["status"])["format"] == "ecs"
