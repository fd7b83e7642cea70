"""Runs: the seed's rules. Every event of a relaunched or resumed run is recorded
against the initial launch run id, naming the run itself in ``status``; a delete is two
events (the user's, then the backend's drop); the backend's own work (status changes,
completion, credentials reads) is ``system``."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from examples.platform.auth import ROOT

AS_ROOT = {"Authorization": f"Bearer {ROOT.token}"}


@pytest.fixture
def setup(platform: TestClient, audit, place) -> dict[str, str]:
    """Credentials, a compute environment using them, and a pipeline on it."""
    creds = platform.post(f"{place.path}/credentials", json={
        "name": "aws", "provider": "aws", "keys": {"key": "k"}}).json()["id"]
    ce = platform.post(f"{place.path}/compute-envs", json={
        "name": "batch", "platform": "aws-batch", "credentials_id": creds,
        "work_dir": "s3://w"}).json()["id"]
    pipeline = platform.post(f"{place.path}/pipelines", json={
        "name": "rnaseq", "repository": "https://git/r", "compute_env_id": ce}).json()["id"]
    audit.events.clear()
    return {"creds": creds, "ce": ce, "pipeline": pipeline}


def launch(platform: TestClient, place, setup: dict[str, str], **extra: str) -> str:
    response = platform.post(f"{place.path}/runs/launch",
                             json={"pipeline_id": setup["pipeline"], **extra})
    assert response.status_code == 201, response.text
    run_id: str = response.json()["id"]
    return run_id


def tick(platform: TestClient) -> None:
    assert platform.post("/admin/jobs/tick", headers=AS_ROOT).status_code == 200


def test_a_launch_reads_the_credentials_as_system_then_records_the_launch(
    platform: TestClient, audit, place, setup
) -> None:
    run = launch(platform, place, setup)
    assert audit.records() == [
        place.expect("credentials_accessed", setup["creds"], principal="system"),
        place.expect("run_launched", run),
    ]


def test_a_run_created_outside_the_platform_reads_no_credentials(
    platform: TestClient, audit, place
) -> None:
    run = platform.post(f"{place.path}/runs", json={"repository": "https://git/r"}).json()["id"]
    assert audit.records() == [place.expect("run_created", run)]


def test_relaunch_and_resume_are_recorded_with_the_initial_launch_run_id_naming_the_new_run(
    platform: TestClient, audit, place, setup
) -> None:
    first = launch(platform, place, setup)
    relaunched = platform.post(f"{place.path}/runs/{first}/relaunch").json()
    resumed = platform.post(f"{place.path}/runs/{relaunched['id']}/resume").json()
    assert len({first, relaunched["id"], resumed["id"]}) == 3  # three distinct runs
    launches = [r for r in audit.records() if r["type"] != "credentials_accessed"]
    assert launches == [place.expect("run_launched", first),
                        place.expect("run_relaunched", first,
                                     status=f"run {relaunched['id']} from {first}"),
                        place.expect("run_resumed", first,
                                     status=f"run {resumed['id']} from {relaunched['id']}")]


def test_every_later_event_of_a_relaunched_run_targets_the_initial_launch_naming_the_run(
    platform: TestClient, audit, place, setup
) -> None:
    first = launch(platform, place, setup, outcome="failed")
    relaunched = platform.post(f"{place.path}/runs/{first}/relaunch").json()["id"]
    # A resume of the relaunch: two steps from the initial launch.
    resumed = platform.post(f"{place.path}/runs/{relaunched}/resume").json()["id"]
    tick(platform)
    audit.events.clear()
    tick(platform)
    assert platform.delete(f"{place.path}/runs/{resumed}").status_code == 202
    tick(platform)
    assert audit.records() == [
        place.expect("run_completed", first, principal="system", status="failed"),
        place.expect("run_completed", first, principal="system",
                     status=f"failed; run {relaunched}"),
        place.expect("run_completed", first, principal="system",
                     status=f"failed; run {resumed}"),
        place.expect("run_deleted", first, status=f"run {resumed}"),
        place.expect("run_dropped", first, principal="system", status=f"run {resumed}"),
    ]
    # The HTTP API still addresses each run by its own id.
    assert platform.get(f"{place.path}/runs/{relaunched}").json()["id"] == relaunched
    assert platform.get(f"{place.path}/runs/{resumed}").status_code == 404


def test_a_status_change_of_a_relaunched_run_names_the_run_after_its_status(
    platform: TestClient, audit, place, setup
) -> None:
    first = launch(platform, place, setup)
    relaunched = platform.post(f"{place.path}/runs/{first}/relaunch").json()["id"]
    audit.events.clear()
    tick(platform)
    assert audit.records() == [
        place.expect("run_status_changed", first, principal="system", status="running"),
        place.expect("run_status_changed", first, principal="system",
                     status=f"running; run {relaunched}"),
    ]


def test_every_relaunch_reads_the_credentials_again(platform, audit, place, setup) -> None:
    first = launch(platform, place, setup)
    platform.post(f"{place.path}/runs/{first}/relaunch")
    platform.post(f"{place.path}/runs/{first}/resume")
    reads = [e for e in audit.events if e.type == "credentials_accessed"]
    assert [(e.target, e.principal, e.client_ip) for e in reads] == [
        (setup["creds"], "system", "")] * 3


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_the_backend_records_status_changes_and_completion_as_system(
    platform: TestClient, audit, place, setup, outcome: str
) -> None:
    run = launch(platform, place, setup, outcome=outcome)
    audit.events.clear()
    tick(platform)
    tick(platform)
    tick(platform)  # nothing left to do: no event
    assert audit.records() == [
        place.expect("run_status_changed", run, principal="system", status="running"),
        place.expect("run_completed", run, principal="system", status=outcome),
    ]


def test_deleting_a_run_is_two_events_the_users_then_the_backends_drop(
    platform: TestClient, audit, place, setup
) -> None:
    run = launch(platform, place, setup)
    audit.events.clear()
    assert platform.delete(f"{place.path}/runs/{run}").status_code == 202
    assert platform.get(f"{place.path}/runs/{run}").json()["marked_for_deletion"] is True
    tick(platform)
    assert platform.get(f"{place.path}/runs/{run}").status_code == 404
    assert audit.records() == [
        place.expect("run_deleted", run),
        place.expect("run_dropped", run, principal="system"),
    ]


def test_a_run_marked_for_deletion_cannot_be_relaunched_or_deleted_again(
    platform: TestClient, audit, place, setup
) -> None:
    run = launch(platform, place, setup)
    platform.delete(f"{place.path}/runs/{run}")
    audit.events.clear()
    assert platform.post(f"{place.path}/runs/{run}/relaunch").status_code == 409
    assert platform.delete(f"{place.path}/runs/{run}").status_code == 409
    assert audit.events == []


def test_only_root_can_step_the_backend(platform: TestClient, audit) -> None:
    assert platform.post("/admin/jobs/tick").status_code == 403
