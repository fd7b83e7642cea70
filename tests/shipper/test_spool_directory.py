"""Where a spool's files are (``spool_files``): a directory others can write is not
trusted (a private subdirectory per user instead), and a directory that cannot be read
or changes hands is said, at a low rate."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from audit_middleware.shipper.spool import Spool
from audit_middleware.shipper.spool_files import SUFFIX
from tests.shipper.spool_helpers import drain, spool_files, types_unread


def test_a_spool_directory_others_can_write_is_not_trusted(tmp_path: Path) -> None:
    """Whoever else can write the directory can plant batches that would be replayed to
    the collector under this app's name. A shared directory is common (a volume mounted
    0777; one made by a server's root master whose workers run as another user), so it
    is not refused: this user spools in a private subdirectory of it, and never adopts
    what lies in the shared one."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    planted = Spool(tmp_path / "elsewhere", max_bytes=1 << 20)
    planted.append(b'{"forged": true}')  # a batch file made by "someone else"
    planted.close()
    for f in spool_files(tmp_path / "elsewhere"):
        f.rename(shared / f.name)
    spool = Spool(shared, max_bytes=1 << 20)
    private = shared / f".uid-{os.geteuid()}"
    assert spool.directory == private
    assert spool.adopt_orphans() == 0
    assert spool.append(b"ours")
    assert oct(private.stat().st_mode & 0o777) == "0o700"
    assert drain(spool) == [b"ours"]
    shared.chmod(0o755)  # its owner makes it theirs alone: then it is theirs to replay
    fixed = Spool(shared, max_bytes=1 << 20)
    assert fixed.adopt_orphans() == 1 and drain(fixed) == [b'{"forged": true}']


def test_a_spool_directory_made_shared_later_is_not_trusted_either(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(directory, max_bytes=1 << 20)  # not there yet: it would be made 0700
    directory.mkdir()
    directory.chmod(0o777)  # made by someone else meanwhile
    assert spool.append(b"batch")
    assert spool_files(directory) == []  # not in the shared directory itself
    assert len(spool_files(directory / f".uid-{os.geteuid()}")) == 1


def test_the_spool_directory_is_chosen_for_each_effective_user(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn --preload --user app: the sink is made in the root master, and the
    workers spool as app. Each effective user gets its own choice: the configured
    directory where it is that user's, a private subdirectory where it is not."""
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o755)
    owner = os.geteuid()
    spool = Spool(directory, max_bytes=1 << 20)
    assert spool.directory == directory
    monkeypatch.setattr(os, "geteuid", lambda: owner + 4242)  # another user
    assert spool.directory == directory / f".uid-{owner + 4242}"
    monkeypatch.setattr(os, "geteuid", lambda: owner)
    assert spool.directory == directory


@pytest.mark.parametrize("taken_by", ["a symbolic link", "another user's directory"])
def test_a_private_subdirectory_taken_first_makes_the_place_unusable_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken_by: str) -> None:
    """In a spool directory others can write (the 1733 the docs offer), another user may
    make this user's .uid-<uid> first: a directory of theirs, or a symbolic link to one.
    The spool refuses it when it spools, but check_place took it for usable (its user
    can write there): nothing said, spool_unusable 0, until the outage dropped every
    batch."""
    directory = tmp_path / "spool"
    directory.mkdir()
    directory.chmod(0o1777)  # others may make entries: this user spools in .uid-<uid>
    if taken_by == "a symbolic link":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        (directory / f".uid-{os.geteuid()}").symlink_to(elsewhere)
    else:  # made by this test's user, seen by a spool of another
        worker = os.geteuid() + 4242
        (directory / f".uid-{worker}").mkdir(mode=0o700)
        monkeypatch.setattr(os, "geteuid", lambda: worker)
    spool = Spool(directory, max_bytes=1 << 20)
    assert not spool.append(b"batch")  # refused where it would spool
    problem = spool.check_place()
    assert f".uid-{os.geteuid()}" in problem and "cannot be used" in problem


def test_batches_are_never_stranded_silently_when_the_directory_changes_hands(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Made shared after batches were spooled in it: they are not replayed (anyone could
    have put them there), and an error says how many and what to do. Made private again:
    what was spooled in the private subdirectory meanwhile is replayed too."""
    directory = tmp_path / "spool"
    first = Spool(directory, max_bytes=1 << 20)
    assert first.append(b"before")
    first.close()
    directory.chmod(0o777)
    shared = Spool(directory, max_bytes=1 << 20)
    assert shared.adopt_orphans() == 0
    assert "1 batch file(s) in" in caplog.text and "chmod go-w" in caplog.text
    assert shared.append(b"meanwhile")  # into .uid-<euid>
    shared.close()
    directory.chmod(0o700)
    private_again = Spool(directory, max_bytes=1 << 20)
    assert private_again.adopt_orphans() == 2
    assert drain(private_again) == [b"before", b"meanwhile"]


def test_a_private_subdirectory_planted_as_a_symlink_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (shared / f".uid-{os.geteuid()}").symlink_to(elsewhere)  # by "another user"
    spool = Spool(shared, max_bytes=1 << 20)
    assert not spool.append(b"batch")
    assert spool.adopt_orphans() == 0
    assert list(elsewhere.iterdir()) == []
    assert "symbolic link" in caplog.text


def test_a_spool_directory_it_cannot_read_is_an_error_not_a_crash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    refuse_scans(monkeypatch)
    assert spool.adopt_orphans() == 0
    assert "cannot read" in caplog.text and "Permission denied" in caplog.text


def refuse_scans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing any directory fails as for a directory this user cannot read."""
    def refused(path: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", refused)


def test_a_forked_child_says_its_own_first_scan_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Scan failures are said at the 1st, 2nd, 4th, ... in a process, but the count was
    inherited at a fork: after 4 in the parent (a preloading master's scan at start), a
    worker's first was its 5th, and not said."""
    spool = Spool(tmp_path, max_bytes=1 << 20)

    def refused(path: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", refused)
    for _ in range(4):
        assert spool.adopt_orphans() == 0
    caplog.clear()
    spool.after_fork()  # what the child's fork hook does
    assert spool.adopt_orphans() == 0
    said = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(said) == 1 and "so far" not in said[0]


def test_a_scan_that_cannot_read_the_directory_says_so_at_1_2_4_8_scans(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Said at each scan (every 10 s) for as long as the directory stayed unreadable."""
    spool = Spool(tmp_path, max_bytes=1 << 20)
    refuse_scans(monkeypatch)
    for _ in range(8):
        assert spool.adopt_orphans() == 0
    said = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(said) == 4 and "said again at 16" in said[-1]


def test_batch_files_stranded_in_a_shared_directory_are_said_once_until_they_change(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Said at every scan (every 10 s) while the directory stayed shared: an error log
    line per worker every 10 s, which buried everything else."""
    directory = tmp_path / "spool"
    first = Spool(directory, max_bytes=1 << 20, file_bytes=1)
    assert first.append(b"before")
    first.close()
    directory.chmod(0o777)
    shared = Spool(directory, max_bytes=1 << 20)

    def said() -> int:
        return sum("batch file(s) in" in r.getMessage() for r in caplog.records)

    for _ in range(3):
        assert shared.adopt_orphans() == 0
    assert said() == 1
    directory.chmod(0o700)  # a second one stranded there meanwhile
    second = Spool(directory, max_bytes=1 << 20)
    assert second.append(b"another")
    second.close()
    directory.chmod(0o777)
    assert shared.adopt_orphans() == 0
    assert said() == 2 and "2 batch file(s) in" in caplog.records[-1].getMessage()


def test_a_symbolic_link_in_a_shared_directory_is_not_counted_as_a_stranded_batch_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Anything named like a spool file was counted as a batch file not replayed: a
    symbolic link (anyone's, in a shared directory; a backup tool's) made the count
    wrong, and an operator went looking for batches that were not there. Regular files
    only are counted, never following a link; the link is named for what it is."""
    directory = tmp_path / "spool"
    first = Spool(directory, max_bytes=1 << 20)
    assert first.append(b"before")
    first.close()
    (real,) = spool_files(directory)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / real.name).write_bytes(real.read_bytes())  # what a link could point at
    link = directory / ("00000000000000000001-1-aa" + SUFFIX)  # older than the real one
    link.symlink_to(elsewhere / real.name)
    directory.chmod(0o777)
    shared = Spool(directory, max_bytes=1 << 20)
    assert shared.adopt_orphans() == 0
    said = [r.getMessage() for r in caplog.records if "batch file(s) in" in r.getMessage()]
    assert len(said) == 1 and "1 batch file(s) in" in said[0], said
    assert f"{link.name!r} is a symbolic link" in said[0], said


def test_a_link_named_to_forge_a_log_line_in_a_shared_directory_is_named_escaped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Anyone can name something in a shared directory: a link named with a line break
    (and made the first in order) wrote a line of its author's into the app's log, in the
    stranded files' error that names it. Its name is quoted, the break escaped."""
    directory = tmp_path / "spool"
    first = Spool(directory, max_bytes=1 << 20)
    assert first.append(b"before")
    first.close()
    forged = "0\nCRITICAL audit: forged line\n" + SUFFIX
    (directory / forged).symlink_to(tmp_path / "nowhere")
    directory.chmod(0o777)
    shared = Spool(directory, max_bytes=1 << 20)
    assert shared.adopt_orphans() == 0
    (said,) = [r.getMessage() for r in caplog.records if "batch file(s) in" in r.getMessage()]
    assert "\n" not in said, said
    assert f"{forged!r} is a symbolic link" in said, said


def test_an_entry_of_a_shared_directory_the_disk_cannot_stat_fails_no_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Telling links from batch files in a shared directory reads each entry's type
    (``lstat`` where the directory does not give it); a read the disk refused (EIO)
    escaped the scan: the sink's construction, which scans, failed with it. The report
    of stranded files waits for a scan that can read them, as for a directory that
    cannot be listed."""
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / ("0-1-aa" + SUFFIX)).symlink_to(tmp_path / "nowhere")
    directory.chmod(0o777)
    unread = types_unread(lambda place, name: Path(place) == directory)  # all its entries
    monkeypatch.setattr(os, "scandir", unread)
    shared = Spool(directory, max_bytes=1 << 20)
    assert shared.adopt_orphans() == 0


def test_another_collectors_batch_files_are_not_counted_as_this_sinks_stranded_ones(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two sinks (two collector urls) sharing a spool directory: the files tagged for
    the other one are never this sink's to replay, shared directory or not. Counted as
    this sink's stranded batches, they sent an operator looking for batches it never
    lost; the count is of those this sink would adopt, and with none, nothing is said."""
    directory = tmp_path / "spool"
    for url, batch in (("https://a.example/", b"ours"), ("https://b.example/", b"theirs")):
        writer = Spool(directory, max_bytes=1 << 20, destination=url)
        assert writer.append(batch)
        writer.close()
    assert len(spool_files(directory)) == 2
    directory.chmod(0o777)
    ours = Spool(directory, max_bytes=1 << 20, destination="https://a.example/")
    assert ours.adopt_orphans() == 0
    said = [r.getMessage() for r in caplog.records if "batch file(s) in" in r.getMessage()]
    assert len(said) == 1 and "1 batch file(s) in" in said[0], said
    caplog.clear()
    alone = Spool(directory, max_bytes=1 << 20, destination="https://c.example/")
    assert alone.adopt_orphans() == 0  # both are another collector's: none stranded here
    assert "batch file(s) in" not in caplog.text, caplog.text
