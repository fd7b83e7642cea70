"""A walk through every audited action of the platform, over HTTP.

``python -m examples.run`` drives it against the live server; the tests drive it
in-process and check that it yields exactly the seed catalogue. Alice (a demo user)
signs in and does the work; the root user manages users and steps the run backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from .auth import ALICE, ROOT


class TourError(RuntimeError):
    """The platform answered a tour step unexpectedly (the message has the response)."""


@dataclass
class Tour:
    client: httpx.Client
    token: str = ""
    #: Every id the tour created, by name (``org``, ``run``, ``relaunched_run``, ...).
    ids: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, *, as_root: bool = False,
             **kwargs: Any) -> dict[str, Any]:
        token = ROOT.token if as_root else self.token
        response = self.client.request(method, path, headers={"Authorization": f"Bearer {token}"},
                                       **kwargs)
        if response.status_code >= 400:
            raise TourError(f"{method} {path} answered {response.status_code}: {response.text}")
        body: dict[str, Any] = response.json() if "json" in response.headers.get(
            "content-type", "") else {}
        return body

    def add(self, name: str, path: str, body: dict[str, Any]) -> str:
        self.ids[name] = self.call("POST", path, json=body)["id"]
        return self.ids[name]


def run_tour(client: httpx.Client) -> Tour:
    """Produce every event type of the seed catalogue at least once."""
    response = client.post("/sign-in", json={"email": ALICE.email, "password": ALICE.password})
    if response.status_code != 200:
        raise TourError(f"sign-in answered {response.status_code}: {response.text}")
    tour = Tour(client, token=response.json()["token"])
    _accounts(tour)
    ws = _organization(tour)
    _resources(tour, ws)
    _runs(tour, ws)
    _data_explorer(tour, ws)
    _teardown(tour, ws)
    return tour


def _accounts(tour: Tour) -> None:
    user = tour.call("POST", "/users", as_root=True, json={
        "name": "Bob Builder", "email": "bob@example.org", "password": "bob-password"})
    tour.ids["user"] = user["id"]
    tour.call("PUT", f"/users/{user['id']}", as_root=True, json={"name": "Robert Builder"})
    token = tour.add("access_token", "/tokens", {"name": "ci"})
    tour.call("DELETE", f"/tokens/{token}")


def _organization(tour: Tour) -> str:
    org = tour.add("org", "/orgs", {"name": "acme"})
    team = tour.add("team", f"/orgs/{org}/teams", {"name": "bioinformatics"})
    tour.call("DELETE", f"/orgs/{org}/teams/{team}")
    ws = f"/orgs/{org}/workspaces/" + tour.add("workspace", f"/orgs/{org}/workspaces",
                                               {"name": "genomics"})
    part = tour.add("participant", f"{ws}/participants",
                    {"user_id": tour.ids["user"], "role": "launch"})
    tour.call("PUT", f"{ws}/participants/{part}/role", json={"role": "maintain"})
    return ws


def _resources(tour: Tour, ws: str) -> None:
    creds = tour.add("credentials", f"{ws}/credentials", {
        "name": "aws-main", "provider": "aws",
        "keys": {"access_key": "AKIADEMO", "secret_key": "demo-secret-key"}})
    tour.call("PUT", f"{ws}/credentials/{creds}", json={"name": "aws-prod"})
    ce = tour.add("compute_env", f"{ws}/compute-envs", {
        "name": "batch", "platform": "aws-batch", "credentials_id": creds,
        "work_dir": "s3://acme-work"})
    tour.call("PUT", f"{ws}/compute-envs/{ce}", json={"work_dir": "s3://acme-scratch"})
    pipeline = tour.add("pipeline", f"{ws}/pipelines", {
        "name": "rnaseq", "repository": "https://github.com/nf-core/rnaseq",
        "compute_env_id": ce})
    tour.add("action", f"{ws}/actions",
             {"name": "on-push", "pipeline_id": pipeline, "source": "github"})
    secret = tour.add("secret", f"{ws}/pipeline-secrets",
                      {"name": "NCBI_KEY", "value": "demo-ncbi-key"})
    tour.call("PUT", f"{ws}/pipeline-secrets/{secret}", json={"value": "demo-ncbi-key-2"})


def _runs(tour: Tour, ws: str) -> None:
    run = tour.add("run", f"{ws}/runs/launch", {"pipeline_id": tour.ids["pipeline"]})
    tour.add("external_run", f"{ws}/runs",
             {"repository": "https://github.com/nf-core/sarek"})
    tour.ids["relaunched_run"] = tour.call("POST", f"{ws}/runs/{run}/relaunch")["id"]
    tour.ids["resumed_run"] = tour.call(
        "POST", f"{ws}/runs/{tour.ids['relaunched_run']}/resume")["id"]
    tour.call("POST", "/admin/jobs/tick", as_root=True)  # submitted -> running
    tour.call("POST", "/admin/jobs/tick", as_root=True)  # running -> succeeded
    # The resumed run (a resume of a relaunch) is deleted: its events, to the drop, all
    # target the initial launch.
    tour.call("DELETE", f"{ws}/runs/{tour.ids['resumed_run']}")
    tour.call("POST", "/admin/jobs/tick", as_root=True)  # drops the deleted run


def _data_explorer(tour: Tour, ws: str) -> None:
    bucket = tour.add("bucket", f"{ws}/data-links", {
        "name": "reads", "uri": "s3://acme-reads", "credentials_id": tour.ids["credentials"]})
    dl = f"{ws}/data-links/{bucket}"
    tour.call("PUT", dl, json={"name": "raw reads"})
    tour.call("POST", f"{dl}/hide")
    tour.call("POST", f"{dl}/show")
    tour.call("PUT", f"{dl}/files/samples/s1.fastq", content=b"@read1\nACGT\n+\n!!!!\n")
    tour.call("GET", f"{dl}/preview/samples/s1.fastq")
    tour.call("GET", f"{dl}/files/samples/s1.fastq")


def _teardown(tour: Tour, ws: str) -> None:
    ids = tour.ids
    tour.call("DELETE", f"{ws}/data-links/{ids['bucket']}")
    tour.call("DELETE", f"{ws}/pipeline-secrets/{ids['secret']}")
    tour.call("DELETE", f"{ws}/actions/{ids['action']}")
    tour.call("DELETE", f"{ws}/pipelines/{ids['pipeline']}")
    tour.call("DELETE", f"{ws}/compute-envs/{ids['compute_env']}")
    tour.call("DELETE", f"{ws}/credentials/{ids['credentials']}")
    tour.call("DELETE", f"{ws}/participants/{ids['participant']}")
    tour.call("DELETE", ws)
    tour.call("DELETE", f"/orgs/{ids['org']}")
    tour.call("DELETE", f"/users/{ids['user']}", as_root=True)
