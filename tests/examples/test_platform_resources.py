"""Workspace resources: each add, edit and delete is one record in the workspace, and an
edit record never carries the edited values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

Body = Callable[[dict[str, str]], dict[str, Any]]

# collection, resource key, create body (given earlier ids), edit body (None: no edit)
RESOURCES: list[tuple[str, str, Body, dict[str, Any] | None]] = [
    ("credentials", "credentials",
     lambda ids: {"name": "aws", "provider": "aws", "keys": {"key": "k"}},
     {"name": "EDITED-NAME-1"}),
    ("compute-envs", "compute_env",
     lambda ids: {"name": "batch", "platform": "aws-batch", "credentials_id": ids["creds"],
                  "work_dir": "s3://work"},
     {"work_dir": "s3://EDITED-DIR-2"}),
    ("pipelines", "pipeline",
     lambda ids: {"name": "rnaseq", "repository": "https://git/r", "compute_env_id": ids["ce"]},
     None),
    ("actions", "pipeline_action",
     lambda ids: {"name": "on-push", "pipeline_id": ids["pipeline"], "source": "github"},
     None),
    ("pipeline-secrets", "pipeline_secret",
     lambda ids: {"name": "TOKEN", "value": "v1"},
     {"value": "EDITED-SECRET-3"}),
]


def prerequisites(platform: TestClient, base: str) -> dict[str, str]:
    creds = platform.post(f"{base}/credentials", json=RESOURCES[0][2]({})).json()["id"]
    ce = platform.post(f"{base}/compute-envs",
                       json=RESOURCES[1][2]({"creds": creds})).json()["id"]
    pipeline = platform.post(f"{base}/pipelines", json=RESOURCES[2][2]({"ce": ce})).json()["id"]
    return {"creds": creds, "ce": ce, "pipeline": pipeline}


@pytest.mark.parametrize(("collection", "resource", "create", "edit"), RESOURCES,
                         ids=[r[1] for r in RESOURCES])
def test_add_edit_delete_are_recorded_against_the_resource(
    platform: TestClient, audit, place, collection: str, resource: str, create: Body,
    edit: dict[str, Any] | None,
) -> None:
    ids = prerequisites(platform, place.path)
    audit.events.clear()
    created = platform.post(f"{place.path}/{collection}", json=create(ids))
    assert created.status_code == 201, created.text
    ident = created.json()["id"]
    expected = [place.expect(f"{resource}_created", ident)]
    if edit is not None:
        assert platform.put(f"{place.path}/{collection}/{ident}", json=edit).status_code == 200
        expected.append(place.expect(f"{resource}_updated", ident))
    assert platform.delete(f"{place.path}/{collection}/{ident}").status_code == 200
    expected.append(place.expect(f"{resource}_deleted", ident))
    assert audit.records() == expected


def test_edit_records_carry_no_edited_values(platform: TestClient, audit, place) -> None:
    ids = prerequisites(platform, place.path)
    for collection, _, create, edit in RESOURCES:
        if edit is not None:
            ident = platform.post(f"{place.path}/{collection}", json=create(ids)).json()["id"]
            platform.put(f"{place.path}/{collection}/{ident}", json=edit)
    edits = [line for line in audit.lines() if b"_updated" in line]
    assert len(edits) == 3
    assert not [line for line in edits if b"EDITED-" in line]


def test_a_resource_of_another_workspace_is_not_found_and_nothing_is_recorded(
    platform: TestClient, audit, place
) -> None:
    creds = prerequisites(platform, place.path)["creds"]
    other = platform.post(f"/orgs/{place.org_id}/workspaces", json={"name": "b"}).json()["id"]
    audit.events.clear()
    response = platform.delete(f"/orgs/{place.org_id}/workspaces/{other}/credentials/{creds}")
    assert response.status_code == 404
    assert audit.events == []
