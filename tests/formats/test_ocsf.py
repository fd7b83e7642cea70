"""OCSF output: every record maps to a valid OCSF 1.3.0 event of API Activity (6003) or,
for sign-ins, Authentication (3002), checked against the published 1.3.0 schema export
(``ocsf_schema``), and against the JSON Schema that ``ocsf-json-schema`` builds from it."""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema  # type: ignore[import-untyped]

from collector.formats import classify, to_ocsf
from tests.formats.conformance import ocsf_problems
from tests.formats.ocsf_schema import OCSF_VERSION
from tests.formats.records import SEED_TYPES, stored, variety


@pytest.mark.parametrize("record", variety(), ids=lambda r: f"{r['type']}-{r['seq']}")
def test_every_record_is_a_valid_ocsf_event(record: dict[str, Any]) -> None:
    assert ocsf_problems(to_ocsf(record)) == []


def test_the_checker_refuses_what_the_schema_refuses() -> None:
    event = to_ocsf(stored())
    del event["actor"]
    event["colour"] = "blue"
    event["src_endpoint"] = {"ip": "not-an-ip"}
    event["type_uid"] = 600399
    problems = ocsf_problems(event)
    assert "event.actor is required" in problems
    assert "event.colour is not an attribute of the schema" in problems
    assert any(p.startswith("event.src_endpoint.ip = 'not-an-ip' does not match") for p in problems)
    assert "type_uid is not class_uid * 100 + activity_id" in problems


@pytest.mark.parametrize(("change", "problem"), [
    (lambda e: e.update(activity_id=7), "event.activity_id = 7 is not in its enum"),
    (lambda e: e.update(activity_name="Read"),
     "event.activity_name 'Read' is not 'Delete', the caption of activity_id 4"),
    (lambda e: e.update(status="Failure"),
     "event.status 'Failure' is not 'Success', the caption of status_id 1"),
    (lambda e: e.update(category_uid=3), "event.category_uid = 3 is not in its enum"),
    (lambda e: e.update(time="2026-11-26T01:07:10Z"), "event.time must be an integer"),
    (lambda e: e["actor"]["user"].update(type_id=5), "event.actor.user.type_id = 5 is not"),
    (lambda e: e["metadata"]["product"].pop("vendor_name"),
     "event.metadata.product.vendor_name is required"),
    (lambda e: e.update(cloud={"provider": "aws"}),
     "event.cloud belongs to profile cloud, which metadata.profiles does not name"),
    (lambda e: e["src_endpoint"].update(intermediate_ips="10.0.0.2"),
     "event.src_endpoint.intermediate_ips must be an array"),
    (lambda e: e.update(actor={}), "event.actor needs at least one of process, user"),
])
def test_the_checker_reads_the_published_schema(change: Any, problem: str) -> None:
    event = to_ocsf(stored(7))
    change(event)
    assert any(p.startswith(problem) for p in ocsf_problems(event)), ocsf_problems(event)


@pytest.mark.parametrize("record", variety(), ids=lambda r: f"{r['type']}-{r['seq']}")
def test_the_packaged_json_schema_accepts_every_event_too(record: dict[str, Any]) -> None:
    # A second reading of the same published schema, by the package's own generator.
    event = to_ocsf(record)
    schema = json_schema().get_class_schema(
        class_name=json_schema().lookup_class_name_from_uid(class_uid=event["class_uid"]),
        profiles=[])
    errors = [f"{list(e.path)}: {e.message}"
              for e in jsonschema.Draft202012Validator(schema).iter_errors(event)]
    assert errors == []


@cache
def json_schema() -> Any:
    return OcsfJsonSchemaEmbedded(get_ocsf_schema(version=OCSF_VERSION))


def test_an_api_event_carries_who_what_where_and_when() -> None:
    event = to_ocsf(stored(7))
    assert (event["class_uid"], event["activity_id"], event["type_uid"]) == (6003, 4, 600304)
    assert event["time"] == 1_795_655_230_123  # 2026-11-26T01:07:10.123Z in ms
    assert event["actor"]["user"] == {"uid": "u-7", "type_id": 1, "type": "User",
                                      "org": {"uid": "o-1", "name": "Acme"}}
    assert event["api"]["operation"] == "credentials_deleted"
    assert event["resources"] == [{"uid": "c-42", "type": "credentials",
                                   "group": {"uid": "w-1", "name": "genomics"}}]
    assert event["src_endpoint"] == {"ip": "198.51.100.7"}
    assert event["metadata"]["uid"] == stored(7)["id"]
    assert event["metadata"]["correlation_uid"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert event["metadata"]["original_time"] == "2026-11-26T01:07:10.123456Z"
    assert event["unmapped"]["seq"] == 7
    assert event["unmapped"]["span_id"] == "00f067aa0ba902b7"


@pytest.mark.parametrize(("event_type", "activity"), [
    ("credentials_created", 1), ("run_launched", 1), ("bucket_file_uploaded", 1),
    ("credentials_accessed", 2), ("bucket_file_downloaded", 2),
    ("compute_env_updated", 3), ("participant_role_updated", 3), ("bucket_hidden", 3),
    ("run_status_changed", 3), ("run_completed", 3),
    ("workspace_deleted", 4), ("run_dropped", 4),
    ("report_exported", 2), ("quota_rebalanced", 99),
])
def test_the_activity_comes_from_the_seed_action(event_type: str, activity: int) -> None:
    assert to_ocsf(stored(type=event_type))["activity_id"] == activity


def test_every_seed_type_has_a_crud_activity() -> None:
    assert [t for t in SEED_TYPES if classify(t)[1] == 99 and t != "user_sign_in"] == []


def test_a_sign_in_is_an_authentication_logon_of_the_target_user() -> None:
    event = to_ocsf(stored(type="user_sign_in", target="u-9", principal="u-9",
                           status="password"))
    assert (event["class_uid"], event["activity_id"], event["type_uid"]) == (3002, 1, 300201)
    assert event["user"]["uid"] == "u-9"
    assert (event["auth_protocol_id"], event["auth_protocol"]) == (99, "password")
    assert event["src_endpoint"] == {"ip": "198.51.100.7"}
    assert to_ocsf(stored(type="user_sign_in", status="saml"))["auth_protocol"] == "SAML"


def test_a_failure_is_a_failure_status_with_its_detail() -> None:
    event = to_ocsf(stored(status="failed: PermissionError"))
    assert (event["status_id"], event["status"]) == (2, "Failure")
    assert event["status_detail"] == "failed: PermissionError"


def test_a_denied_request_is_a_failure_not_a_success() -> None:
    """The middleware's denied_event (HTTP 401/403 before any handler) was exported as
    status Success: a SIEM read the refused access as granted."""
    event = to_ocsf(stored(type="credentials_deleted", status="HTTP 403 on DELETE"))
    assert (event["status_id"], event["status"]) == (2, "Failure")
    assert event["status_detail"] == "HTTP 403 on DELETE"
    assert to_ocsf(stored(status="HTTP 200 on GET"))["status_id"] == 1


def test_the_collectors_own_refused_read_is_a_failure() -> None:
    status = '{"status":401,"reason":"unknown token","attempts":1,"method":"GET"}'
    event = to_ocsf(stored(type="audit_log_access_denied", principal="", status=status))
    assert (event["status_id"], event["status"]) == (2, "Failure")


def test_a_system_event_is_a_system_user_without_an_ip() -> None:
    event = to_ocsf(stored(type="run_dropped", principal="system", client_ip=""))
    assert event["actor"]["user"]["type_id"] == 3
    assert event["src_endpoint"] == {"name": "system"}


def test_a_user_whose_id_is_system_is_a_user_from_an_address() -> None:
    event = to_ocsf(stored(type="run_deleted", principal="system", client_ip="203.0.113.9"))
    assert event["actor"]["user"]["type_id"] == 1  # a person, not the application
    assert event["src_endpoint"] == {"ip": "203.0.113.9"}


def test_the_proxy_that_vouched_for_the_client_is_an_intermediate_ip() -> None:
    event = to_ocsf(stored(client_ip="192.0.2.50", peer_ip="10.0.0.2"))
    assert event["src_endpoint"] == {"ip": "192.0.2.50", "intermediate_ips": ["10.0.0.2"]}


def test_a_proxy_on_a_unix_socket_is_unmapped_not_an_intermediate_ip() -> None:
    # peer_ip "unix" (trusted_proxies ["unix"]) is no address: intermediate_ips are ip_t.
    for kind in ("credentials_deleted", "user_sign_in"):
        event = to_ocsf(stored(type=kind, client_ip="192.0.2.50", peer_ip="unix"))
        assert event["src_endpoint"] == {"ip": "192.0.2.50"}
        assert event["unmapped"]["peer_ip"] == "unix"
        assert ocsf_problems(event) == []


def test_a_client_ip_that_is_no_address_is_unmapped_not_the_endpoint_ip() -> None:
    # A server's peer text (a test client's "testclient", a client's own X-Forwarded-For
    # text copied by uvicorn --proxy-headers): src_endpoint.ip is ip_t.
    for kind in ("credentials_deleted", "user_sign_in"):
        event = to_ocsf(stored(type=kind, client_ip="testclient"))
        assert event["src_endpoint"] == {"name": "unknown"}
        assert event["unmapped"]["client_ip"] == "testclient"
        assert ocsf_problems(event) == []
