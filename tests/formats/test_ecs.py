"""ECS output: every record maps to fields of the published ECS field list, with allowed
categorization values, checked against the verbatim extract in ``data/ecs``."""

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
    assert "audit.target is not in the ECS extract (8.12.0-dev)" in problems
    assert "event.outcome 'ok' is not an allowed value" in problems
    assert "event.type 'deletion' is not expected with category 'authentication'" in problems


@pytest.mark.parametrize(("change", "problem"), [
    (lambda d: d["event"].update(kind="audit"), "event.kind 'audit' is not an allowed value"),
    (lambda d: d["event"].update(type=["access"], category=["iam"]),
     "event.type 'access' is not expected with category 'iam'"),
    (lambda d: d["event"].update(category="iam"), "event.category must be an array"),
    (lambda d: d["event"].update(sequence="3"), "event.sequence must be a long"),
    (lambda d: d["source"].update(ip="proxy"), "source.ip must be an IP address"),
    (lambda d: d.update(labels={"n": 1}), "labels must be an object of keyword values"),
    (lambda d: d["user"].update(id=["u-7"]), "user.id is not an array field"),
    (lambda d: d.pop("ecs"), "ecs.version is missing"),
])
def test_the_checker_reads_the_published_field_list(change: Any, problem: str) -> None:
    doc = to_ecs(stored())
    change(doc)
    assert any(p.startswith(problem) for p in ecs_problems(doc)), ecs_problems(doc)


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


def test_a_denied_request_has_outcome_failure() -> None:
    """A denied request (the middleware's denied_event) was exported as a success."""
    event = to_ecs(stored(status="HTTP 401 on POST"))["event"]
    assert (event["outcome"], event["reason"]) == ("failure", "HTTP 401 on POST")


def test_the_collectors_own_refused_read_has_outcome_failure() -> None:
    """A refused read of the audit log (a wrong token at the panel) is the collector's
    own record, its status the refusal's details: it was exported as a success, and a
    SIEM rule on failures missed a token-guessing attack."""
    status = '{"status":401,"reason":"unknown token","attempts":1,"method":"GET"}'
    event = to_ecs(stored(type="audit_log_access_denied", principal="", status=status))
    assert event["event"]["outcome"] == "failure"
    assert to_ecs(stored(type="audit_log_viewed", status="{}"))["event"]["outcome"] == "success"


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


def test_a_proxy_on_a_unix_socket_is_a_label_not_a_related_ip() -> None:
    # peer_ip "unix" (trusted_proxies ["unix"]) is no address: related.ip is of ECS type
    # ip, and an index mapped to ECS refuses the whole document over it.
    doc = to_ecs(stored(client_ip="192.0.2.50", peer_ip="unix"))
    assert doc["related"]["ip"] == ["192.0.2.50"]
    assert doc["labels"]["peer_ip"] == "unix"
    assert ecs_problems(doc) == []
    assert "ip" not in to_ecs(stored(client_ip="", peer_ip="unix")).get("related", {})


def test_a_client_ip_that_is_no_address_is_a_label_not_the_source_ip() -> None:
    # A server's peer text (a test client's "testclient"; uvicorn --proxy-headers copies
    # a client's own X-Forwarded-For text into scope["client"]): source.ip is of ECS type
    # ip, and an index mapped to ECS refuses the whole document over it.
    doc = to_ecs(stored(client_ip="testclient"))
    assert "source" not in doc and "ip" not in doc.get("related", {})
    assert doc["labels"]["client_ip"] == "testclient"
    assert ecs_problems(doc) == []
    assert "client_ip" not in to_ecs(stored(client_ip="192.0.2.50")).get("labels", {})
