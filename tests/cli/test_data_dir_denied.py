"""The read commands run by a user who may not look into the data directory or its
segments/ (another user's, 0750 or 0700): "Permission denied", the path, and as whom to
run the command; not "0 segments", nor the system's "[Errno 13]" alone.

In-process, the refusal given by the os functions (as root, no mode refuses anything),
and the user made another than the files' owner, as tests/collector/
test_index_catching_up.py and test_bad_input.py do."""

from __future__ import annotations

import errno
import os
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector.cli import main
from collector.storage.in_the_way import SEGMENTS, refuse_other_than_a_dir
from tests.integrity.helpers import build_store

OWNER = pwd.getpwuid(os.geteuid()).pw_name  # whose the test's files are


def refuse(monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...],
           denied: Callable[[str], bool]) -> None:
    """The os functions ``names`` refuse (EACCES) the paths ``denied`` says, as the
    system refuses a user who is not the files' owner (made one: uid 4242)."""
    for name in names:
        real = getattr(os, name)

        def refusing(path: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            if isinstance(path, (str, os.PathLike)) and denied(os.fspath(path)):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, refusing)
    monkeypatch.setattr(os, "geteuid", lambda: 4242)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def as_whom(where: Path) -> str:
    """The hint ``access_hint`` gives when ``where`` is the nearest path it may look at."""
    return f"{where} is {OWNER}'s (group "


def test_verify_of_a_data_directory_this_user_may_not_enter_says_as_whom_to_run_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The data directory 0750 and not this user's: verify said "cannot read the data
    directory: [Errno 13] Permission denied: '.../segments'", with no word of whose
    it is or as whom to run it."""
    data = build_store(tmp_path / "data", batches=2)
    refuse(monkeypatch, ("stat", "lstat", "open", "listdir", "scandir"),
           lambda path: path.startswith(f"{data}/"))
    code, said = run(capsys, "verify", "--data-dir", str(data))
    assert code == 2, said
    assert f"Permission denied ({data / 'segments'}): {as_whom(data)}" in said, said
    assert f"run this as {OWNER} (sudo -u {OWNER} audit-collector ...)" in said, said


@pytest.mark.parametrize("command", ["verify", "stats"])
def test_segments_this_user_may_not_list_are_said_so_with_as_whom_to_run_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], command: str) -> None:
    """segments/ 0700, the rest of the store open to the reader's group: stats said
    "segments.count 0" (Path.glob took the refusal for an empty directory), verify
    "[Errno 13]" alone."""
    data = build_store(tmp_path / "data", batches=2)
    segments = data / "segments"
    refuse(monkeypatch, ("listdir", "scandir"), lambda path: path == str(segments))
    code, said = run(capsys, command, "--data-dir", str(data))
    assert code == 2, said
    assert f"Permission denied ({segments}): {as_whom(segments)}" in said, said
    assert f"run this as {OWNER}" in said, said
    assert "segments.count" not in said


def test_a_segments_directory_that_cannot_be_looked_at_is_not_taken_for_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check every read command makes first let it through as "none there", and the
    commands went on to "no audit data" or "has no segments/ directory: not a collector
    data directory" (as pathlib reads a refusal on some Python versions)."""
    segments = tmp_path / "segments"
    segments.mkdir()
    refuse(monkeypatch, ("stat",), lambda path: path == str(segments))
    with pytest.raises(PermissionError) as refused:
        refuse_other_than_a_dir(segments, SEGMENTS)
    assert refused.value.filename == str(segments)


def test_losses_reads_the_index_when_only_segments_cannot_be_looked_at(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """segments/ a link to a disk of its own (docs/api.md) that this user may not reach,
    the index beside it readable: `losses`, which reads the index alone, listed the
    losses before the check of segments/ raised a refused stat; it was then refused."""
    data = build_store(tmp_path / "data", batches=2)
    segments = data / "segments"
    refuse(monkeypatch, ("stat",), lambda path: path == str(segments))
    code, said = run(capsys, "losses", "--data-dir", str(data))
    assert code == 0, said
    assert "source(s) lost events" in said, said


def test_losses_of_a_data_directory_this_user_may_not_enter_says_as_whom_to_run_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The index refused as well as segments/: the refusal of segments/, as the other
    read commands say it."""
    data = build_store(tmp_path / "data", batches=2)
    refuse(monkeypatch, ("stat", "lstat", "open"), lambda path: path.startswith(f"{data}/"))
    code, said = run(capsys, "losses", "--data-dir", str(data))
    assert code == 2, said
    assert f"Permission denied ({data / 'segments'}): {as_whom(data)}" in said, said


def test_stats_of_segments_this_user_may_list_but_not_search_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """segments/ readable but not searchable to the reader (mode 0740, say): its listing
    works, each file's stat is refused, and stats said "segments.count 0" of a store
    with segments, as it did of a listing refused."""
    data = build_store(tmp_path / "data", batches=2)
    segments = data / "segments"
    refuse(monkeypatch, ("stat",), lambda path: path.startswith(f"{segments}/"))
    code, said = run(capsys, "stats", "--data-dir", str(data))
    assert code == 2, said
    assert f"Permission denied ({segments}/segment-" in said, said
    assert f"{as_whom(segments)}" in said, said
    assert "segments.count" not in said


def test_segments_linked_where_this_user_may_not_go_names_where_it_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """segments/ a link to a disk of its own, whose directory (0700) this user may not
    enter: the hint named the data directory (open to the reader's group: "run this as
    a member of the group", which the reader is), not the directory that refuses."""
    data = build_store(tmp_path / "data", batches=2)
    segments = data / "segments"
    elsewhere = tmp_path / "disk"
    elsewhere.mkdir()
    segments.rename(elsewhere / "segments")
    segments.symlink_to(elsewhere / "segments")
    refuse(monkeypatch, ("stat", "listdir", "scandir"),
           lambda path: path == str(segments) or path.startswith(f"{elsewhere}/"))
    code, said = run(capsys, "stats", "--data-dir", str(data))
    assert code == 2, said
    assert f"Permission denied ({segments}): {as_whom(elsewhere)}" in said, said
