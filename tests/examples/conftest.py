"""Fixtures for the example apps: the platform behind a TestClient with a real client
IP, a captured audit trail, and an organization + workspace to work in."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from audit_middleware import configure
from audit_middleware.event import AuditEvent
from audit_middleware.testing import capture_audit_events, reset_configuration
from examples.platform import create_app
from examples.platform.auth import ALICE, ROOT

CLIENT_IP = "203.0.113.7"
AS_ALICE = {"Authorization": f"Bearer {ALICE.token}"}
AS_ROOT = {"Authorization": f"Bearer {ROOT.token}"}
#: Decided at emit time; ``test_platform_catalogue`` checks their format.
GENERATED = ("id", "created", "trace_id", "span_id")


class Audit:
    """The events captured during a test."""

    def __init__(self, events: list[AuditEvent]) -> None:
        self.events = events

    def records(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.to_dict().items() if k not in GENERATED}
                for e in self.events]

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def lines(self) -> list[bytes]:
        return [e.to_json_line() for e in self.events]


@dataclass
class Place:
    """Where an event happened: an organization and workspace, or nowhere (empty)."""

    org_id: str = ""
    org_name: str = ""
    workspace_id: str = ""
    workspace_name: str = ""

    @property
    def path(self) -> str:
        return f"/orgs/{self.org_id}/workspaces/{self.workspace_id}"

    def expect(self, type: str, target: str, *, principal: str = ALICE.id, status: str = "",
               client_ip: str = CLIENT_IP, **optional: str) -> dict[str, Any]:
        """The full record (less the generated fields) of an event in this place;
        ``optional`` fields such as ``peer_ip`` when the record should carry them."""
        return {"v": 1, "type": type, "target": target, "principal": principal,
                "status": status, "org_id": self.org_id, "org_name": self.org_name,
                "workspace_id": self.workspace_id, "workspace_name": self.workspace_name,
                "client_ip": client_ip if principal != "system" else "", **optional}


@pytest.fixture
def audit() -> Iterator[Audit]:
    with capture_audit_events() as captured:
        yield Audit(captured)
    reset_configuration()


@pytest.fixture
def events_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """An example run as its docstring says, with no sink configured but
    ``AUDIT_EVENTS_FILE`` set; the fixture's value reads what was written (closing the
    sink first, so that everything emitted is in the file)."""
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv("AUDIT_EVENTS_FILE", str(path))
    reset_configuration()

    def written() -> list[dict[str, Any]]:
        configure(sink=None)  # flushes and closes the file sink
        return [json.loads(line) for line in path.read_text().splitlines()]

    yield written
    reset_configuration()


@pytest.fixture
def platform(audit: Audit) -> TestClient:
    """The platform, called by Alice (default headers) from ``CLIENT_IP``."""
    return TestClient(create_app(), client=(CLIENT_IP, 50123), headers=AS_ALICE)


@pytest.fixture
def nowhere() -> Place:
    return Place()


@pytest.fixture
def place(platform: TestClient, audit: Audit) -> Place:
    """Organization "acme" with workspace "genomics"; the audit trail starts after."""
    org = platform.post("/orgs", json={"name": "acme"}).json()["id"]
    ws = platform.post(f"/orgs/{org}/workspaces", json={"name": "genomics"}).json()["id"]
    audit.events.clear()
    return Place(org, "acme", ws, "genomics")
