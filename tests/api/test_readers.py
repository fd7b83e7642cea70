"""Reader accounts: tokens shown once and stored only as hashes in a 0600 file, checked
in constant time, revoked at once; `audit-collector users add|list|remove`."""

from __future__ import annotations

import hashlib
import os
import pwd
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from collector.cli import main as cli_main
from collector.readers import READERS_FILE, ReaderError, Readers
from tests.e2e.harness import ROOT, outcome_within, run_python


def test_a_token_is_stored_only_as_its_hash_in_a_private_file(tmp_path: Path) -> None:
    readers = Readers(tmp_path)
    token = readers.add("alice", root=True)
    path = tmp_path / READERS_FILE
    text = path.read_text()
    secret = token.split("_", 2)[2]  # the secret itself may hold "_"
    assert token not in text and secret not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_token_authenticates_its_reader_only(tmp_path: Path) -> None:
    readers = Readers(tmp_path)
    alice, bob = readers.add("alice", root=True), readers.add("bob", root=False)
    assert readers.authenticate(alice).name == "alice"  # type: ignore[union-attr]
    assert readers.authenticate(bob).root is False  # type: ignore[union-attr]
    key_id = alice.split("_")[1]
    for wrong in ("", "alice", alice + "x", alice[:-1], f"ac_{key_id}_" + "A" * 43,
                  bob.replace(bob.split("_")[1], key_id), None, 42, "ac_" + "é" * 60):
        assert readers.authenticate(wrong) is None, wrong


def test_tokens_are_unique_and_long(tmp_path: Path) -> None:
    readers = Readers(tmp_path)
    tokens = {readers.add(f"r{i}", root=False) for i in range(20)}
    assert len(tokens) == 20 and all(len(t) >= 60 for t in tokens)


def test_a_name_can_be_added_once(tmp_path: Path) -> None:
    readers = Readers(tmp_path)
    readers.add("alice", root=True)
    with pytest.raises(ReaderError, match="exists already.*users remove alice"):
        readers.add("alice", root=False)


@pytest.mark.parametrize("name", ["", "-x", "a b", "<script>", "x" * 65, "ünï"])
def test_a_reader_name_must_be_plain(tmp_path: Path, name: str) -> None:
    with pytest.raises(ReaderError, match="not valid"):
        Readers(tmp_path).add(name, root=True)


def test_removing_a_reader_revokes_its_token_for_a_running_reader_set(tmp_path: Path) -> None:
    serving, cli = Readers(tmp_path), Readers(tmp_path)  # two processes, in effect
    token = cli.add("alice", root=True)
    assert serving.authenticate(token) is not None
    cli.remove("alice")
    assert serving.authenticate(token) is None
    with pytest.raises(ReaderError, match="no reader named 'alice'"):
        cli.remove("alice")


def test_a_damaged_file_is_a_clear_error_not_an_open_door(tmp_path: Path) -> None:
    readers = Readers(tmp_path)
    token = readers.add("alice", root=True)
    (tmp_path / READERS_FILE).write_text("{not json")
    with pytest.raises(ReaderError, match="cannot be read"):
        readers.authenticate(token)


def test_a_fifo_in_place_of_the_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A FIFO (or a device) put in readers.json's place: every sign-in and every
    ``users`` command waited in its open for a writer, for good (and /dev/zero filled
    memory). Refused at once, as the data directory's other files are."""
    readers = Readers(tmp_path)
    token = readers.add("alice", root=True)
    (tmp_path / READERS_FILE).unlink()
    os.mkfifo(tmp_path / READERS_FILE)
    outcome = outcome_within(10, lambda: Readers(tmp_path).authenticate(token))
    assert isinstance(outcome, ReaderError), outcome
    assert "a FIFO" in str(outcome) and "cannot be read" in str(outcome)


def test_a_file_the_collector_may_not_read_is_said_as_such_not_as_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A readers.json another user owns (0600) was reported as damaged: "restore it from
    a backup, or delete it and add the readers again", which loses every reader."""
    readers = Readers(tmp_path)
    token = readers.add("alice", root=True)

    def refused(path: Path, limit: int) -> bytes:
        raise PermissionError(13, "Permission denied", str(path))

    # As root, chmod 000 would not do.
    monkeypatch.setattr("collector.readers.read_regular", refused)
    with pytest.raises(ReaderError) as raised:
        readers.authenticate(token)
    assert "Permission denied" in str(raised.value)
    assert "chown" in str(raised.value) and "delete it" not in str(raised.value)


def test_a_file_another_user_may_not_read_names_its_owner_and_the_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The advice was "chown it to the collector's user": for ``users list`` by a member
    of the collector's group, the file is the collector's already (a chown changes
    nothing: run it as that user); for a file root's ``users add`` left, readers.lock is
    root's too, and the next ``users add`` as the collector's user failed on it."""
    (tmp_path / "segments").mkdir()
    Readers(tmp_path).add("alice", root=True)

    def refused(path: Path, limit: int) -> bytes:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("collector.readers.read_regular", refused)
    assert cli_main(["users", "list", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    owner = pwd.getpwuid((tmp_path / READERS_FILE).stat().st_uid).pw_name
    assert f"it is {owner}'s alone" in err and "as the collector's user" in err
    assert "chown it and readers.lock" in err


def test_no_file_means_no_readers(tmp_path: Path) -> None:
    readers = Readers(tmp_path)
    assert readers.all() == [] and readers.authenticate("ac_" + "0" * 16 + "_" + "A" * 43) is None


def users(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector", "users", *args,
                           "--data-dir", str(data_dir)], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, check=False,
                          env={**os.environ, "AUDIT_CONFIG": ""})


def test_the_users_command_adds_lists_and_removes(tmp_path: Path) -> None:
    added = users(tmp_path, "add", "alice", "--root")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert "shown only now" in added.stderr
    assert Readers(tmp_path).authenticate(token).root  # type: ignore[union-attr]
    bob = users(tmp_path, "add", "bob")
    assert bob.returncode == 0
    # What a reader without --root is for, and what makes one that reads audit logs.
    assert "metrics_auth = reader" in bob.stderr and "give --root" in bob.stderr
    listed = users(tmp_path, "list")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["alice", "root"], ["bob", "reader"]]
    assert token not in listed.stdout
    hashes = [r["token_sha256"] for r in orjson.loads((tmp_path / READERS_FILE).read_bytes())["readers"]]
    assert not any(h in listed.stdout for h in hashes)
    assert users(tmp_path, "remove", "alice").returncode == 0
    assert Readers(tmp_path).authenticate(token) is None
    missing = users(tmp_path, "remove", "alice")
    assert missing.returncode == 2 and "no reader named 'alice'" in missing.stderr


def test_a_name_that_differs_from_a_reader_only_in_case_is_refused_naming_it(
        tmp_path: Path) -> None:
    """Reads are recorded under their reader's name and searched by exact name: with
    both alice and Alice readers, principal=alice missed Alice's reads."""
    assert users(tmp_path, "add", "alice", "--root").returncode == 0
    refused = users(tmp_path, "add", "Alice", "--root")
    assert refused.returncode == 2 and refused.stdout == ""
    assert "taken for the existing reader 'alice'" in refused.stderr
    assert [r.name for r in Readers(tmp_path).all()] == ["alice"]


def test_a_name_is_refused_if_a_hand_edited_readers_look_alike_folds_to_it(
        tmp_path: Path) -> None:
    readers = Readers(tmp_path)
    readers.add("bob", root=True)
    path = tmp_path / READERS_FILE
    path.write_text(path.read_text().replace('"bob"', '"\uff21lice"'))  # fullwidth "A"
    with pytest.raises(ReaderError, match="taken for the existing reader 'Ａlice'"):
        readers.add("alice", root=True)


@pytest.mark.parametrize("name", [None, 42, ["alice"]])
def test_a_hand_edited_reader_name_that_is_not_text_is_damage_not_a_crash(
        tmp_path: Path, name: object) -> None:
    """A name that is not a string loaded as it was: ``users add`` then crashed with a
    traceback (folding it to compare), ``users list`` too, and a read of that reader
    was recorded under a principal that is not text."""
    readers = Readers(tmp_path)
    token = readers.add("bob", root=True)
    path = tmp_path / READERS_FILE
    stored = orjson.loads(path.read_bytes())
    stored["readers"][0]["name"] = name
    path.write_bytes(orjson.dumps(stored))
    with pytest.raises(ReaderError, match="cannot be read.*reader name .* is not text"):
        readers.add("alice", root=True)
    with pytest.raises(ReaderError, match="cannot be read"):
        readers.authenticate(token)


@pytest.mark.parametrize("action", [["add", "ops", "--root"], ["remove", "alice"]])
def test_an_edit_by_another_user_than_the_data_directorys_owner_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    action: list[str]
) -> None:
    """root's ``users add`` in the data directory of a collector running as ``audit``
    left readers.json root's alone (0600): the collector could not read it, and every
    sign-in and API read answered 503 until someone found out why."""
    Readers(tmp_path).add("alice", root=True)
    before = (tmp_path / READERS_FILE).read_bytes()
    owner = tmp_path.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)  # someone else (root, say)
    assert cli_main(["users", *action, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "the collector could not read it" in err and "sudo -u" in err
    assert (tmp_path / READERS_FILE).read_bytes() == before


@pytest.mark.parametrize("editor", ["data directory's owner", "collector's user"])
def test_the_collectors_user_is_the_one_who_made_segments_not_the_data_directorys_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    fake_owners: Callable[[dict[Path, int]], None], editor: str
) -> None:
    """A data directory root made for the collector's group (root:audit 0770), or a
    volume a container platform mounts root's: root's ``users add`` was allowed (and left
    readers.json root's alone: 503 for every sign-in), the collector's user's refused,
    told to run it as root."""
    (tmp_path / "segments").mkdir()  # the collector's first start made it
    Readers(tmp_path).add("alice", root=True)
    before = (tmp_path / READERS_FILE).read_bytes()
    collector = (tmp_path / "segments").stat().st_uid
    fake_owners({tmp_path: collector + 1})
    euid = collector + 1 if editor == "data directory's owner" else collector
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    done = cli_main(["users", "add", "ops", "--root", "--data-dir", str(tmp_path)])
    if editor == "data directory's owner":
        assert done == 2
        assert "the collector could not read it" in capsys.readouterr().err
        assert (tmp_path / READERS_FILE).read_bytes() == before
    else:
        assert done == 0, capsys.readouterr().err
        assert [r.name for r in Readers(tmp_path).all()] == ["alice", "ops"]


def test_the_command_suggested_for_a_uid_without_a_name_runs_as_pasted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    fake_owners: Callable[[dict[Path, int]], None]
) -> None:
    """A container's uid without a passwd entry: ``sudo -u #1000 ...`` pasted in a shell
    is ``sudo -u`` and a comment."""
    (tmp_path / "segments").mkdir()
    uid = next(u for u in range(60999, 1000, -1) if not _has_name(u))
    fake_owners({tmp_path: uid, tmp_path / "segments": uid})
    assert cli_main(["users", "add", "ops", "--data-dir", str(tmp_path)]) == 2
    suggested = capsys.readouterr().err.rsplit(": ", 1)[1]
    assert shlex.split(suggested, comments=True)[:4] == [
        "sudo", "-u", f"#{uid}", "audit-collector"]


def _has_name(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_an_edit_killed_mid_write_leaves_no_file_behind_after_the_next(tmp_path: Path) -> None:
    """The temporary file was named after the editing process: each `users add` killed
    before its rename left one behind for good."""
    killed = ("import os, sys\nfrom pathlib import Path\nfrom collector.readers import Readers\n"
              "os.replace = lambda *a: os._exit(9)\n"
              "Readers(Path(sys.argv[1])).add('first', root=True)\n")
    done = run_python(killed, str(tmp_path))
    assert done.returncode in (-9, 9), done.stderr
    assert list(tmp_path.glob(".readers.json*.tmp"))  # what the killed edit left
    Readers(tmp_path).add("second", root=False)
    assert not list(tmp_path.glob(".readers.json*.tmp"))
    assert [r.name for r in Readers(tmp_path).all()] == ["second"]


def test_a_link_planted_as_the_temporary_file_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (tmp_path / ".readers.json.tmp").symlink_to(victim)
    Readers(tmp_path).add("alice", root=True)
    assert victim.read_text() == "untouched"
    assert [r.name for r in Readers(tmp_path).all()] == ["alice"]


def test_a_file_past_the_size_limit_is_refused_not_loaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_READERS_BYTES held by no test: a file past it (/dev/zero's worth, a file no
    `users add` wrote) is refused as damaged, naming the limit, before it is parsed."""
    import collector.readers as readers_module

    readers = Readers(tmp_path)
    token = readers.add("alice", root=True)
    size = (tmp_path / READERS_FILE).stat().st_size
    monkeypatch.setattr(readers_module, "MAX_READERS_BYTES", size - 1)
    with pytest.raises(ReaderError, match=f"larger than {size - 1:,} bytes.*restore it"):
        Readers(tmp_path).authenticate(token)
