"""The example platform reaches the whole seed catalogue, and every record it writes is
a well-formed schema-v1 record."""

from __future__ import annotations

import re
import uuid

import orjson
from starlette.testclient import TestClient

from audit_middleware import configure
from audit_middleware.catalogue import SEED_CATALOGUE
from audit_middleware.event import FIELDS
from examples.platform.tour import run_tour
from tests.examples.run_lineage import LATER, follow_runs

SEED_TYPES = {t for actions in SEED_CATALOGUE.values() for t in actions.values()}
RFC3339_MICROS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def test_the_tour_produces_exactly_the_seed_catalogue(platform: TestClient, audit) -> None:
    run_tour(platform)
    assert set(audit.types()) == SEED_TYPES
    assert len(SEED_TYPES) == 45  # the seed's table, resource by resource


def test_every_record_is_one_schema_v1_line(platform: TestClient, audit) -> None:
    run_tour(platform)
    for line in audit.lines():
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        record = orjson.loads(line)
        assert tuple(record)[: len(FIELDS)] == FIELDS
        assert record["v"] == 1
        assert RFC3339_MICROS.fullmatch(record["created"]), record


def test_redaction_changes_no_record_of_the_tour(platform: TestClient, audit) -> None:
    """``redact_secrets=True`` finds no secret in what the platform records (ids,
    UUIDs, names, emails, paths, statuses): every record is as it would be without."""
    configure(redact_secrets=True)
    run_tour(platform)
    assert set(audit.types()) == SEED_TYPES
    assert [line for line in audit.lines() if b"[redacted:" in line] == []


def test_every_run_of_the_tour_can_be_followed_to_its_launch_from_the_records_alone(
    platform: TestClient, audit
) -> None:
    ids = run_tour(platform).ids
    launch_of = follow_runs(audit.records())
    assert launch_of == {ids["run"]: ids["run"], ids["external_run"]: ids["external_run"],
                         ids["relaunched_run"]: ids["run"], ids["resumed_run"]: ids["run"]}
    # The tour's resumed run (a resume of a relaunch) goes through every later event.
    resumed = {r["type"] for r in audit.records()
               if re.search(rf"\brun {ids['resumed_run']}\b", r["status"])}
    assert resumed == {"run_resumed", *LATER}


def test_event_ids_are_unique_uuid7_in_emit_order(platform: TestClient, audit) -> None:
    run_tour(platform)
    ids = [uuid.UUID(e.id) for e in audit.events]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # one process emits in time order


def test_a_request_without_an_audited_action_records_nothing(
    platform: TestClient, audit, place
) -> None:
    run = platform.post(f"{place.path}/runs", json={"repository": "r"}).json()["id"]
    audit.events.clear()
    assert platform.get(f"{place.path}/runs/{run}").status_code == 200
    assert audit.events == []
