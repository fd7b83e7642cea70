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


def tour_section() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("## Five-minute tour", 1)[1].split("\n## ", 1)[0]


def tour_blocks() -> list[str]:
    """The Python code blocks of the README's "Five-minute tour" section, in order."""
    return re.findall(r"```python\n(.*?)```", tour_section(), flags=re.DOTALL)


def tour_line() -> dict[str, Any]:
    """The record the tour shows (its one JSON block)."""
    [line] = re.findall(r"```json\n(.*?)\n```", tour_section(), flags=re.DOTALL)
    record: dict[str, Any] = orjson.loads(line)
    return record


@pytest.fixture
def tour_app(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The tour's app, built in ``tmp_path`` (its sink writes audit-data/ there), from
    the snippet exactly as written."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    try:
        exec(compile(tour_blocks()[0], "README.md (tour)", "exec"), namespace)  # noqa: S102
        yield namespace
    finally:
        audit.configure(sink=None)
        reset_configuration()
        os.chdir(cwd)


def test_the_tour_app_records_one_line_per_delete(tour_app: dict[str, Any],
                                                  tmp_path: Path) -> None:
    client = TestClient(tour_app["app"], client=("198.51.100.7", 50000),
                        headers={"Authorization": "Bearer t-7"})  # as the README says
    assert client.delete("/orgs/o-1/credentials/c-42").status_code == 204
    assert client.get("/orgs/o-1/credentials/c-42").status_code == 405  # not audited
    audit.configure(sink=None)  # the sink it replaces is flushed and closed
    [line] = (tmp_path / "audit-data" / "events.jsonl").read_bytes().splitlines()
    record = orjson.loads(line)
    shown = tour_line()
    assert list(record) == list(shown)  # the fields the README shows, in its order
    generated = ("id", "created")  # decided at emit time: their form only
    assert {k: v for k, v in record.items() if k not in generated} == {
        k: v for k, v in shown.items() if k not in generated}
    for key in generated:
        assert re.fullmatch(re.sub(r"[0-9a-f]", "[0-9a-f]", shown[key]), record[key]), key


def test_the_tours_own_test_passes(tour_app: dict[str, Any]) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(tour_blocks()[1], "README.md (tour test)", "exec"), namespace)  # noqa: S102
    namespace["test_delete_is_audited"](TestClient(tour_app["app"]))
