"""``audit-collector losses``: the list read from the data directory's files is the API's
list (``GET /api/v1/sources/losses``) of the same store; what cannot be read is said,
exit 2. (``losses ack`` against a running collector: tests/e2e/test_losses_cli.py.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector import losses
from collector.cli import main
from collector.storage.records import encode_events
from tests.collector.storage_helpers import events, open_store


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["losses", *args])
    out, err = capsys.readouterr()
    return code, out, err


def lossy_store(store: Any) -> None:
    for source, seqs, numbered in (("app-1", [1, 4], 6), ("app-2", [1, 3], 0),
                                   ("app-3", [1, 2], 2)):
        store.submit_encoded(encode_events(events(len(seqs))), source, seqs,
                             numbered).result()
    store.acknowledge_losses({"app-2": 3}, by="alice", reason="known")


def test_the_list_is_the_apis_for_the_same_store_running_or_stopped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with open_store(tmp_path) as store:
        lossy_store(store)
        expected = losses.listing(store.stats())  # what the API answers
        code, out, err = run(capsys, "--data-dir", str(tmp_path), "--format", "json")
        assert code == 0, err
        assert orjson.loads(out) == expected
    assert [r["source"] for r in expected["sources"]] == ["app-1", "app-2"]
    code, out, _ = run(capsys, "--data-dir", str(tmp_path), "--format", "json")
    assert code == 0 and orjson.loads(out) == expected  # stopped: the same files
    code, out, err = run(capsys, "--data-dir", str(tmp_path))
    header, rule, first, second = out.splitlines()
    assert header.split()[:2] == ["Source", "Unack."] and set(rule) <= {"-", " "}
    assert first.split()[:3] == ["app-1", "2", "2"] and second.split()[:3] == ["app-2", "0", "0"]
    assert "2 source(s) lost events; unacknowledged: 2 gap and 2 tail" in err


def test_what_cannot_be_read_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    code, _, err = run(capsys, "--data-dir", str(tmp_path / "nothing"))
    assert code == 2 and "no audit data" in err
    (tmp_path / "segments").mkdir()
    code, _, err = run(capsys, "--data-dir", str(tmp_path))
    assert code == 2 and "no index.sqlite" in err
    (tmp_path / "index.sqlite").write_text("junk")
    code, _, err = run(capsys, "--data-dir", str(tmp_path))
    assert code == 2 and "cannot read" in err


def test_an_index_being_brought_up_to_date_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Its sources table may hold some of the sources only: a partial list would read as
    a whole one (losses missing, or acknowledged ones shown as new)."""
    from collector.index import CATCHING_UP

    with open_store(tmp_path) as store:
        lossy_store(store)
    con = sqlite3.connect(tmp_path / "index.sqlite")
    con.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (CATCHING_UP, "3 to index"))
    con.commit()
    con.close()
    code, out, err = run(capsys, "--data-dir", str(tmp_path))
    assert code == 2 and out == "" and "brought up to date" in err



def test_a_recorded_acknowledgement_whose_file_is_not_in_place_is_listed_as_made(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded, its rename failed: the store applies it (its record says it was made)
    and puts the file in place later. The command read loss-acks.json alone, and listed
    the losses as unacknowledged while the API said acknowledged. It applies the rule a
    start applies: a staged file whose record was written is made; one whose record
    was not is not."""
    from tests.collector.storage_helpers import loss_acks_rename_fails

    [record, never] = events(2)
    with open_store(tmp_path) as store:
        lossy_store(store)
        loss_acks_rename_fails(monkeypatch)
        staged = store.stage_loss_ack({"app-1": 6}, by="bob", reason="known too",
                                      record=record["id"])
        assert staged is not None
        store.write([record], "audit-collector-api")
        staged.keep()
        expected = losses.listing(store.stats())  # what the API answers
        assert expected["unacknowledged_gap_events"] == 0
        code, out, err = run(capsys, "--data-dir", str(tmp_path), "--format", "json")
        assert code == 0, err
        assert orjson.loads(out) == expected
    code, out, _ = run(capsys, "--data-dir", str(tmp_path), "--format", "json")
    assert code == 0 and orjson.loads(out) == expected  # stopped: as the next start
    monkeypatch.undo()
    with open_store(tmp_path) as store:
        assert losses.listing(store.stats()) == expected
        unrecorded = store.stage_loss_ack({"app-3": 2}, by="bob", reason="never recorded",
                                          record=never["id"])
        assert unrecorded is not None
        code, out, _ = run(capsys, "--data-dir", str(tmp_path), "--format", "json")
        assert code == 0 and orjson.loads(out) == expected  # not made: not listed
        unrecorded.drop()
