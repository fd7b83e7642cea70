"""The README's five-minute tour, run as written: its app records the line it shows, and
its test of what a handler records passes. A README that stops working fails here."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

import audit_middleware as audit
from audit_middleware.testing import reset_configuration

README = Path(__file__).resolve().parents[2] / "README.md"


def tour_blocks() -> list[str]:
    """The Python code blocks of the README's "Five-minute tour" section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Five-minute tour", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


@pytest.fixture
def tour_app(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The tour's app, built in ``tmp_path`` (its sink writes audit-data/ there), with the
    organization names its lookup reads."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    namespace: dict[str, Any] = {"ORG_NAMES": {"o-1": "Acme"}}
    try:
        exec(compile(tour_blocks()[0], "README.md (tour)", "exec"), namespace)  # noqa: S102
        yield namespace
    finally:
        audit.configure(sink=None)
        reset_configuration()
        os.chdir(cwd)


def test_the_tour_app_records_one_line_per_delete(tour_app: dict[str, Any],
                                                  tmp_path: Path) -> None:
    client = TestClient(tour_app["app"], client=("198.51.100.7", 50000))
    assert client.delete("/orgs/o-1/credentials/c-42").status_code == 204
    assert client.get("/orgs/o-1/credentials/c-42").status_code == 405  # not audited
    audit.configure(sink=None)  # the sink it replaces is flushed and closed
    [line] = (tmp_path / "audit-data" / "events.jsonl").read_bytes().splitlines()
    record = orjson.loads(line)
    assert list(record) == ["v", "id", "type", "target", "principal", "status", "org_id",
                            "org_name", "workspace_id", "workspace_name", "client_ip",
                            "created", "trace_id", "span_id"]  # the fields the README shows
    assert {k: record[k] for k in ("type", "target", "org_id", "org_name", "client_ip")} == {
        "type": "credentials_deleted", "target": "c-42", "org_id": "o-1",
        "org_name": "Acme", "client_ip": "198.51.100.7"}


def test_the_tours_own_test_passes(tour_app: dict[str, Any]) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(tour_blocks()[1], "README.md (tour test)", "exec"), namespace)  # noqa: S102
    namespace["test_delete_is_audited"](TestClient(tour_app["app"]))
