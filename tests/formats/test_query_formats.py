"""`audit-collector query --format ocsf|ecs`: stored records, converted, one JSON object
per line, in the order and with the filters of any other format."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from collector.store import StorageSettings, Store
from tests.collector.storage_helpers import event
from tests.e2e.harness import ROOT
from tests.formats.conformance import ecs_problems, ocsf_problems


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("formats") / "data"
    with Store(StorageSettings(data_dir=data)) as store:
        store.write([event(1, type="run_launched", target="run-1"),
                     event(2, type="user_sign_in", target="u-1", principal="u-1",
                           status="password"),
                     event(3, type="run_dropped", target="run-1", principal="system",
                           client_ip="")])
    yield data


def query(data_dir: Path, *args: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "collector", "query", "--data-dir", str(data_dir),
         "--oldest-first", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "AUDIT_CONFIG": ""})
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for line in done.stdout.splitlines()]


def test_query_format_ocsf_prints_valid_ocsf_events(data_dir: Path) -> None:
    events = query(data_dir, "--format", "ocsf")
    assert [e["class_uid"] for e in events] == [6003, 3002, 6003]
    assert [e["api"]["operation"] for e in events if e["class_uid"] == 6003] == [
        "run_launched", "run_dropped"]
    assert all(ocsf_problems(e) == [] for e in events)  # type: ignore[arg-type]


def test_query_format_ecs_prints_valid_ecs_documents_and_filters_apply(data_dir: Path) -> None:
    docs = query(data_dir, "--format", "ecs", "--type", "run_*", "--all")
    assert [d["event"]["action"] for d in docs] == ["run_launched", "run_dropped"]  # type: ignore[index]
    assert [d["event"]["sequence"] for d in docs] == [1, 3]  # type: ignore[index]
    assert all(ecs_problems(d) == [] for d in docs)  # type: ignore[arg-type]


def test_an_unknown_format_is_refused_with_the_choices(data_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "collector", "query", "--data-dir",
                           str(data_dir), "--format", "cef"], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "ocsf" in done.stderr and "ecs" in done.stderr


@pytest.mark.parametrize("fmt", ["ocsf", "ecs"])
def test_siem_lines_hold_no_raw_c1_control_or_line_separator(fmt: str) -> None:
    """As the jsonl lines: an 8-bit CSI (U+009B) in a principal reached the terminal raw,
    and a U+2028 split the line for a reader that splits on it (str.splitlines)."""
    from collector.formats import formatter, json_lines

    hostile = event(1, principal="csi \x9b2J nel \x85 ls \u2028 ps \u2029", target="t\x9d0;x")
    (line,) = json_lines([hostile], fmt)
    text = line.decode("utf-8")
    assert not {"\x9b", "\x9d", "\x85", "\u2028", "\u2029"} & set(text)
    assert len(text.splitlines()) == 1
    assert orjson.loads(line) == formatter(fmt)(hostile)  # escaped, the same document
