"""ECS output: every record maps to fields of the ECS 8.17 field list, with allowed
categorization values, checked against the vendored excerpt."""

from __future__ import annotations

from typing import Any

import pytest

from collector.formats import to_ecs
from tests.formats.conformance import ecs_problems, flatten
from tests.formats.records import stored, variety


@pytest.mark.parametrize("record", variety(), ids=lambda r: f"{r['type']}-{r['seq']}")
def test_every_record_is_a_valid_ecs_document(record: dict[str, Any]) -> None:
    assert ecs_problems(to_ecs(record)) == []


def test_the_checker_refuses_unknown_fields_and_disallowed_values() -> None:
    doc = to_ecs(stored())
    doc["event"]["outcome"] = "ok"
    doc["event"]["category"] = ["authentication"]  # with type ["deletion"]
    doc["audit"] = {"target": "c-42"}
    problems = ecs_problems(doc)
    assert "audit.target is not an ECS field" in problems
    assert "event.outcome 'ok' is not allowed" in problems
    assert "event.type 'deletion' is not expected with category 'authentication'" in problems


def test_the_core_fields_say_who_did_what_from_where_when() -> None:
    flat = flatten(to_ecs(stored(3)))
    assert flat["@timestamp"] == "2026-11-26T01:07:10.123456Z"
    assert flat["event.action"] == "credentials_deleted"
    assert flat["event.outcome"] == "success"
    assert (flat["event.category"], flat["event.type"]) == (["configuration"], ["deletion"])
    assert flat["event.id"] == stored(3)["id"]
    assert flat["event.sequence"] == 3
    assert flat["user.id"] == "u-7"
    assert flat["source.ip"] == "198.51.100.7"
    assert (flat["organization.id"], flat["organization.name"]) == ("o-1", "Acme")
    assert (flat["trace.id"], flat["span.id"]) == ("4bf92f3577b34da6a3ce929d0e0e4736",
                                                   "00f067aa0ba902b7")
    assert flat["labels"] == {"target": "c-42", "resource": "credentials",
                              "workspace_id": "w-1", "workspace_name": "genomics"}


@pytest.mark.parametrize(("event_type", "category", "types"), [
    ("user_sign_in", ["authentication"], ["start"]),
    ("user_created", ["iam"], ["user", "creation"]),
    ("participant_role_updated", ["iam"], ["user", "change"]),
    ("team_deleted", ["iam"], ["group", "deletion"]),
    ("credentials_accessed", ["configuration"], ["access"]),
    ("run_launched", ["configuration"], ["creation"]),
])
def test_categorization(event_type: str, category: list[str], types: list[str]) -> None:
    event = to_ecs(stored(type=event_type))["event"]
    assert (event["category"], event["type"]) == (category, types)


def test_a_failure_has_outcome_failure_and_its_reason() -> None:
    event = to_ecs(stored(status="failed: HTTP 403"))["event"]
    assert (event["outcome"], event["reason"]) == ("failure", "failed: HTTP 403")


def test_a_user_management_event_names_the_target_user() -> None:
    doc = to_ecs(stored(type="user_deleted", target="u-9"))
    assert doc["user"] == {"id": "u-7", "target": {"id": "u-9"}}
    assert doc["related"]["user"] == ["u-7", "u-9"]


def test_a_system_event_has_no_source_ip_and_the_proxy_is_related() -> None:
    assert "source" not in to_ecs(stored(principal="system", client_ip=""))
    doc = to_ecs(stored(client_ip="192.0.2.50", peer_ip="10.0.0.2"))
    assert doc["source"] == {"ip": "192.0.2.50"}
    assert doc["related"]["ip"] == ["192.0.2.50", "10.0.0.2"]
    assert doc["labels"]["peer_ip"] == "10.0.0.2"
