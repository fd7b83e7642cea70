"""The schema data the format tests check against is the published data, as recorded in
``data/README.md``: the OCSF 1.3.0 export shipped by ``ocsf-json-schema`` (pinned by
sha256), and the ECS extract, which is exactly what ``data/ecs/extract.py``'s rule keeps
of the original files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.formats.data.ecs import extract
from tests.formats.ecs_schema import ecs_allowed, ecs_fields
from tests.formats.ocsf_schema import OCSF_VERSION, ocsf_class, ocsf_schema


def test_the_ocsf_schema_is_the_published_1_3_0_export() -> None:
    schema = ocsf_schema()  # refuses any file but the pinned export
    assert schema["version"] == OCSF_VERSION
    api, auth = ocsf_class(6003), ocsf_class(3002)
    assert api is not None and auth is not None
    assert (api["name"], api["category_uid"]) == ("api_activity", 6)
    assert (auth["name"], auth["category_uid"]) == ("authentication", 3)


def test_the_ecs_extract_is_what_the_rule_keeps_and_carries_one_version() -> None:
    fields_text = extract.FIELDS_FILE.read_text(encoding="utf-8")
    flat_text = extract.CATEGORIZATION_FILE.read_text(encoding="utf-8")
    # The rule applied to its own output keeps everything: nothing was added by hand.
    assert extract.extract_fields(fields_text) == fields_text
    assert extract.extract_categorization(flat_text) == flat_text
    assert set(ecs_fields()) == extract.FIELDS
    assert {row["ECS_Version"] for row in ecs_fields().values()} == {extract.SOURCES["version"]}
    assert list(ecs_allowed()) == list(extract.CATEGORIZATION)


def original_like(tmp_path: Path) -> tuple[Path, Path]:
    """Originals with more rows and entries around the extracted ones, as the real files
    have: the rule must keep exactly the extract."""
    rows = extract.FIELDS_FILE.read_text(encoding="utf-8").splitlines(keepends=True)
    other = "8.12.0-dev,true,agent,agent.id,keyword,core,,8a4f500d,Unique identifier.\n"
    fields = tmp_path / "fields.csv"
    fields.write_text(rows[0] + other + "".join(rows[1:3]) + other.replace("agent.", "x.")
                      + "".join(rows[3:]), encoding="utf-8")
    entries = extract.CATEGORIZATION_FILE.read_text(encoding="utf-8")
    flat = tmp_path / "ecs_flat.yml"
    flat.write_text("agent.id:\n  type: keyword\n" + entries.replace(
        "\nevent.kind:", "\nevent.code:\n  allowed_values:\n  - name: x\n  type: keyword\n"
        "event.kind:") + "faas.id:\n  type: keyword\n", encoding="utf-8")
    return fields, flat


def test_the_extract_script_checks_the_vendored_files_against_originals(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fields, flat = original_like(tmp_path)
    assert extract.main([str(fields), str(flat), "--check"]) == 0
    with open(fields, encoding="utf-8") as f:
        changed = [row for row in csv.reader(f)]
    next(row for row in changed if row[3] == "event.action")[4] = "text"  # as if ECS changed it
    with open(fields, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(changed)
    assert extract.main([str(fields), str(flat), "--check"]) == 1
    assert "fields.csv differs from the extract of the original" in capsys.readouterr().err


def test_an_original_without_a_field_we_emit_is_refused(tmp_path: Path) -> None:
    fields, _ = original_like(tmp_path)
    text = "".join(line for line in fields.read_text(encoding="utf-8").splitlines(True)
                   if ",user.target.id," not in line)
    with pytest.raises(ValueError, match="not in this fields.csv: user.target.id"):
        extract.extract_fields(text)
