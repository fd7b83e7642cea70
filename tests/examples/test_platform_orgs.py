"""Organizations, teams, workspaces and participants: ids and names in every record,
deletions included."""

from __future__ import annotations

from starlette.testclient import TestClient

from examples.platform.auth import ALICE, ROOT


def test_creating_an_organization_records_it_as_target_and_as_organization(
    platform: TestClient, audit, nowhere
) -> None:
    org = platform.post("/orgs", json={"name": "acme"}).json()["id"]
    assert audit.records() == [
        nowhere.expect("organization_created", org) | {"org_id": org, "org_name": "acme"}
    ]


def test_deleting_an_organization_still_names_it(platform: TestClient, audit, place) -> None:
    assert platform.delete(f"/orgs/{place.org_id}").status_code == 200
    in_org = place.expect("organization_deleted", place.org_id)
    assert audit.records() == [in_org | {"workspace_id": "", "workspace_name": ""}]


def test_teams_are_recorded_in_their_organization(platform: TestClient, audit, place) -> None:
    team = platform.post(f"/orgs/{place.org_id}/teams", json={"name": "bio"}).json()["id"]
    platform.delete(f"/orgs/{place.org_id}/teams/{team}")
    org_only = {"workspace_id": "", "workspace_name": ""}
    assert audit.records() == [place.expect("team_created", team) | org_only,
                               place.expect("team_deleted", team) | org_only]


def test_workspaces_are_recorded_with_their_id_and_name(platform: TestClient, audit, place) -> None:
    ws = platform.post(f"/orgs/{place.org_id}/workspaces", json={"name": "lab"}).json()["id"]
    platform.delete(f"/orgs/{place.org_id}/workspaces/{ws}")
    lab = {"workspace_id": ws, "workspace_name": "lab"}
    assert audit.records() == [place.expect("workspace_created", ws) | lab,
                               place.expect("workspace_deleted", ws) | lab]


def test_participants_are_added_updated_and_removed(platform: TestClient, audit, place) -> None:
    part = platform.post(f"{place.path}/participants",
                         json={"user_id": ROOT.id, "role": "view"}).json()["id"]
    platform.put(f"{place.path}/participants/{part}/role", json={"role": "admin"})
    platform.delete(f"{place.path}/participants/{part}")
    assert audit.records() == [
        place.expect("participant_added", part),
        place.expect("participant_role_updated", part),
        place.expect("participant_deleted", part),
    ]


def test_a_workspace_of_another_organization_is_not_found_and_nothing_is_recorded(
    platform: TestClient, audit, place
) -> None:
    other = platform.post("/orgs", json={"name": "other"}).json()["id"]
    audit.events.clear()
    response = platform.post(f"/orgs/{other}/workspaces/{place.workspace_id}/participants",
                             json={"user_id": ALICE.id, "role": "view"})
    assert response.status_code == 404
    assert audit.events == []
