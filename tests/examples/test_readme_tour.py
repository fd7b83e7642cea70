"""The README's five-minute tour, run as written: its app records the line it shows, and
its test of what a handler records passes. A README that stops working fails here, as
does any of its Python snippets that uses a name it does not import, and an install
command naming an extra the package does not have."""

from __future__ import annotations

import ast
import builtins
import os
import re
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

import audit_middleware as audit
from audit_middleware.testing import reset_configuration

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def tour_section() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("## Five-minute tour", 1)[1].split("\n## ", 1)[0]


def tour_blocks() -> list[str]:
    """The Python code blocks of the README's "Five-minute tour" section, in order."""
    return python_blocks(tour_section())


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


def test_the_tour_lines_id_is_of_its_creation_time() -> None:
    """A UUIDv7 starts with its Unix milliseconds: the shown id must be one the shown
    ``created`` could have (docs/record.md), not one of another day."""
    shown = tour_line()
    created = datetime.strptime(shown["created"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    id_ms = int(shown["id"].replace("-", "")[:12], 16)
    assert id_ms == (created - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1), \
        shown["id"]


def unbound_names(snippet: str) -> set[str]:
    """Names ``snippet`` reads that it neither imports, defines nor assigns (nor are
    builtins): a reader copying the snippet alone would get a NameError."""
    tree = ast.parse(snippet)
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
    return {node.id for node in ast.walk(tree)
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)} - bound


def test_every_readme_python_snippet_imports_what_it_uses() -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 3  # the tour's app and test, the collector sink
    for block in blocks:
        assert unbound_names(block) == set(), block


def test_the_readme_says_how_to_install_with_extras_that_exist() -> None:
    """``make`` is not how an app adopts the package: the README names the pip command,
    with extras ``pyproject.toml`` defines (the collector's brings uvicorn)."""
    pyproject = tomllib.loads((README.parent / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    # inline (`pip install ...`) or a line of a shell block, up to its comment
    commands = [inline or line for inline, line in re.findall(
        r"`(pip install [^`]+)`|^(pip install [^#\n]+)", README.read_text(encoding="utf-8"),
        re.MULTILINE)]
    assert commands, "the README names no pip install command"
    named = {extra for command in commands
             for bracket in re.findall(r"\[([a-z,]+)\]", command)
             for extra in bracket.split(",")}
    assert "collector" in named and named <= set(extras), named
    assert any(dep.startswith("uvicorn") for dep in extras["collector"])
