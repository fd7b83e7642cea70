"""Bad input of any shape gets a specific 4xx with a message, records nothing, and
leaves the platform working."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from examples.platform.app import MAX_BODY

BAD_BODIES: list[tuple[str, dict[str, Any], int]] = [
    ("empty", {"content": b""}, 400),
    ("not json", {"content": b"{name: acme"}, 400),
    ("invalid utf-8", {"content": b'{"name": "\xff\xfe"}'}, 400),
    ("a json array", {"json": ["acme"]}, 400),
    ("a json string", {"json": "acme"}, 400),
    ("missing field", {"json": {"title": "acme"}}, 422),
    ("wrong type", {"json": {"name": 42}}, 422),
    ("null", {"json": {"name": None}}, 422),
    ("blank", {"json": {"name": "   "}}, 422),
    ("too long", {"json": {"name": "a" * 10_000}}, 422),
    ("nested", {"json": {"name": {"$ne": ""}}}, 422),
]


@pytest.mark.parametrize(("kwargs", "status"), [(k, s) for _, k, s in BAD_BODIES],
                         ids=[name for name, _, _ in BAD_BODIES])
def test_a_malformed_body_is_a_specific_error_and_records_nothing(
    platform: TestClient, audit, kwargs: dict[str, Any], status: int
) -> None:
    response = platform.post("/orgs", **kwargs)
    assert response.status_code == status
    assert response.json()["error"]  # a message that says what to send
    assert audit.events == []
    assert platform.post("/orgs", json={"name": "acme"}).status_code == 201


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "c", "provider": "aws", "keys": "k"}, "keys"),
    ({"name": "c", "provider": "aws", "keys": {"k": 1}}, "keys"),
    ({"name": "c", "provider": "floppy-disk", "keys": {"k": "v"}}, "provider"),
])
def test_an_invalid_field_names_the_field(platform, audit, place, body, field: str) -> None:
    response = platform.post(f"{place.path}/credentials", json=body)
    assert response.status_code == 422
    assert field in response.json()["error"]
    assert audit.events == []


@pytest.mark.parametrize("path", [
    "/orgs/org_nope/teams",
    "/orgs/org_nope/workspaces",
])
def test_an_unknown_id_in_the_path_is_not_found(platform, audit, path: str) -> None:
    response = platform.post(path, json={"name": "x"})
    assert response.status_code == 404
    assert "org_nope" in response.json()["error"]
    assert audit.events == []


@pytest.mark.parametrize("authorization", ["Bearer nope", "Basic YTpi", "Bearer", "garbage"])
def test_a_bad_authorization_header_is_401_and_recorded_as_denied(
    platform: TestClient, audit, authorization: str
) -> None:
    response = platform.post("/orgs", json={"name": "x"},
                             headers={"Authorization": authorization})
    assert response.status_code == 401
    assert [(e.type, e.target, e.status, e.principal) for e in audit.events] == [
        ("request_denied", "/orgs", "HTTP 401 on POST", "")]
    assert authorization not in audit.events[0].to_json_line().decode()


def test_an_anonymous_request_is_401_and_recorded_as_denied(platform: TestClient,
                                                            audit) -> None:
    platform.headers.pop("Authorization")
    assert platform.post("/orgs", json={"name": "x"}).status_code == 401
    assert [(e.type, e.principal) for e in audit.events] == [("request_denied", "")]


def test_an_oversized_upload_is_413_and_records_nothing(platform, audit, place) -> None:
    bucket = platform.post(f"{place.path}/data-links",
                           json={"name": "b", "uri": "s3://b"}).json()["id"]
    audit.events.clear()
    response = platform.put(f"{place.path}/data-links/{bucket}/files/big.bin",
                            content=b"x" * (MAX_BODY + 1))
    assert response.status_code == 413
    assert audit.events == []


# Percent-encoded, so the client sends the dots as they are and the route sees them.
@pytest.mark.parametrize("path", ["..%2Fetc%2Fpasswd", "a%2F..%2F..%2Fb", "a/%2E%2E/b"])
def test_a_file_path_escaping_the_bucket_is_refused(platform, audit, place, path: str) -> None:
    bucket = platform.post(f"{place.path}/data-links",
                           json={"name": "b", "uri": "s3://b"}).json()["id"]
    audit.events.clear()
    response = platform.put(f"{place.path}/data-links/{bucket}/files/{path}", content=b"x")
    assert response.status_code == 422
    assert audit.events == []
