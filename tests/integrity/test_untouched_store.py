"""An untouched store verifies clean whatever the collector did to it: rotations,
compression, restarts, a crash and its repair, retention, key rotation; on a copy, on
an unpacked archive, and next to a running collector."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from collector.integrity import digests
from collector.integrity.errors import KeyFileError
from collector.integrity.verify import verify
from tests.collector.storage_helpers import events, open_store, wait_until
from tests.e2e.harness import ROOT, CollectorProcess, RawClient, run_python, short_tmp, wire_line
from tests.integrity.helpers import (
    SMALL,
    build_store,
    check,
    digest_paths,
    lines_of,
    minutes_us,
    reasons,
    refuse_digests,
    run_cli,
    run_verify,
    segment_paths,
    tamper,
    wall_clock_at,
)


def kinds(data_dir: Path) -> list[str]:
    found = [digests.parse(line) for p in digest_paths(data_dir) for line in lines_of(p)]
    return [g.kind + (f":{g.why}" if g.kind == "checkpoint" else "")
            for g in sorted(found, key=lambda g: g.n)]


def test_rotated_segments_verify_clean_and_every_seal_has_a_digest(tmp_path: Path) -> None:
    store = build_store(tmp_path / "data", batches=5)
    assert kinds(store) == ["checkpoint:start", "seal", "seal", "seal", "seal",
                            "checkpoint:stop"]
    result = run_verify(str(store))
    assert result.returncode == 0, result.stdout
    assert "summary: 10 file(s): 10 valid, 0 INVALID" in result.stdout


@pytest.mark.parametrize("across_a_restart", [False, True])
def test_a_collector_clock_stepped_back_an_hour_is_no_finding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, across_a_restart: bool) -> None:
    """NTP stepping back a clock that ran an hour ahead (or a VM restored) dated the next
    digest an hour before its predecessor: verify called the untouched store tampered
    (`gap in time`). A digest is dated no earlier than the one it follows."""
    data_dir = tmp_path / "data"
    real_time_ns, step = time.time_ns, [0]
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() - step[0])
    with open_store(data_dir, max_segment_bytes=SMALL) as store:
        for n in range(6):
            if n == 3 and not across_a_restart:
                step[0] = 3600 * 10**9
            store.write(events(3))
    if across_a_restart:
        step[0] = 3600 * 10**9
        with open_store(data_dir, max_segment_bytes=SMALL) as store:
            store.write(events(3))
    report = check(data_dir)
    assert report.valid, reasons(report)
    found = sorted((digests.parse(line) for p in digest_paths(data_dir)
                    for line in lines_of(p)), key=lambda g: g.n)
    assert [g.time for g in found] == sorted(g.time for g in found)


def test_compressed_segments_verify_clean(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with open_store(data_dir, max_segment_bytes=SMALL, compress_sealed=True) as store:
        for _ in range(5):
            store.write(events(3))
        wait_until(lambda: len([p for p in segment_paths(data_dir) if p.suffix == ".gz"]) == 4)
    report = check(data_dir)
    assert report.valid, [str(f) for r in report.invalid for f in r.findings]
    assert sum(r.records for r in report.files if r.path.endswith(".gz")) == 12


def test_a_restarted_store_verifies_clean_and_its_chain_continues(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    for _ in range(3):
        with open_store(data_dir, max_segment_bytes=SMALL) as store:
            store.write(events(3))
            store.write(events(3))
    assert check(data_dir).valid
    starts = [k for k in kinds(data_dir) if k == "checkpoint:start"]
    assert len(starts) == 3


def kill_while_writing(data_dir: Path) -> None:
    """A store writing batches of 20 events as fast as it can, in 8 KiB segments, killed
    with SIGKILL after 30 batches."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from collector.store import Store, StorageSettings
from tests.collector.storage_helpers import events
store = Store(StorageSettings(Path({str(data_dir)!r}), max_segment_bytes=8192))
store.open()
while True:
    store.write(events(20))
    print("ok", flush=True)
"""
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    for _ in range(30):
        writer.stdout.readline()
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()


def test_a_store_killed_mid_write_and_repaired_verifies_clean(tmp_path: Path) -> None:
    """kill -9 while writing, a torn record appended (as a crash mid-write leaves it),
    then the next open quarantines the torn tail and signs what the crash left unsigned:
    recovery and the chain agree."""
    # A kill inside a rotation (the new segment made, its predecessor's seal not yet
    # written: a few milliseconds, every 8 KiB here) leaves a header-only newest segment,
    # which a record cannot follow before that seal: a torn record appended there is no
    # state a crash leaves (verify rightly says the seal is missing; CI met it once).
    # Such a kill is test_a_seal_interrupted_by_a_crash_is_completed_at_the_next_start's.
    for attempt in range(5):
        data_dir = tmp_path / f"data-{attempt}"
        kill_while_writing(data_dir)
        active = segment_paths(data_dir)[-1]
        if len(lines_of(active)) > 1:
            break
    else:
        pytest.fail("5 kills in a row landed inside a rotation")
    with open(active, "ab") as f:
        f.write(lines_of(segment_paths(data_dir)[0])[1][:57])  # a record cut mid-line
    copy = tmp_path / "crashed-copy"
    subprocess.run(["cp", "-a", str(data_dir), str(copy)], check=True)
    crashed = check(copy)  # before any repair: unsigned records and a torn line, no tampering
    assert crashed.valid, [str(f) for r in crashed.invalid for f in r.findings]
    assert any("unterminated" in n for r in crashed.files for n in r.notes)
    with open_store(data_dir, max_segment_bytes=8192) as store:
        store.write(events(5))
    assert list((data_dir / "quarantine").iterdir())
    result = run_verify(str(data_dir))
    assert result.returncode == 0, result.stdout


def test_a_seal_interrupted_by_a_crash_is_completed_at_the_next_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    script = f"""
import os, sys
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from collector.integrity.ledger import Ledger
from collector.store import Store, StorageSettings
from tests.collector.storage_helpers import events
def crash(self, old, new):
    os._exit(9)  # killed after sealing the segment, before its seal digest
store = Store(StorageSettings(Path({str(data_dir)!r}), max_segment_bytes={SMALL}))
store.open()
store.write(events(3))
Ledger.sealed = crash
store.write(events(3))
"""
    done = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert done.returncode == 9
    assert "seal" not in kinds(data_dir)
    with open_store(data_dir, max_segment_bytes=SMALL) as store:
        store.write(events(1))
    assert "seal" in kinds(data_dir)
    report = check(data_dir)
    assert report.valid, [str(f) for r in report.invalid for f in r.findings]
    assert any("written at start-up" in n for r in report.files for n in r.notes)


def test_segments_deleted_by_retention_are_not_missing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with open_store(data_dir, max_segment_bytes=SMALL, retention_bytes=5000) as store:
        for _ in range(8):
            store.write(events(3))
        wait_until(lambda: store.stats()["retention_deleted"] >= 3)
    assert "retention" in kinds(data_dir)
    assert not segment_paths(data_dir)[0].name.startswith("segment-00000001")
    result = run_verify(str(data_dir))
    assert result.returncode == 0, result.stdout
    assert "deleted with their segments by retention" in result.stdout


def test_segments_kept_by_retention_then_deleted_by_hand_are_missing(tmp_path: Path) -> None:
    """Retention's digest says which segments it deleted: the oldest ones it kept,
    removed afterwards with their digest files, are missing, not retention's doing."""
    data_dir = tmp_path / "data"
    with open_store(data_dir, max_segment_bytes=SMALL, retention_bytes=6000) as store:
        for _ in range(10):
            store.write(events(3))
        wait_until(lambda: store.stats()["retention_deleted"] >= 3)
    kept = segment_paths(data_dir)
    assert check(data_dir).valid
    for path in kept[:2] + digest_paths(data_dir)[:2]:
        path.unlink()
    report = check(data_dir)
    assert not report.valid
    found = reasons(report)
    first, second = (int(p.name.split("-")[1]) for p in kept[:2])
    assert found[f"segments/segment-{first:08d}-*.jsonl .. segment-{second:08d}-*.jsonl"] \
        == ["segment missing"]
    assert any("digest missing" in r for r in found.values()), found


def test_a_header_claiming_a_huge_seq_is_one_finding_not_one_per_number(
        tmp_path: Path) -> None:
    """A stray file whose header claims segment 10**18: the segments "missing" before it
    are one finding (verify made one per number, and never ended)."""
    data_dir = build_store(tmp_path / "data", batches=3)
    header = orjson.loads(segment_paths(data_dir)[1].read_bytes().split(b"\n")[0])
    header["segment"]["seq"] = 10**18
    (data_dir / "segments" / "junk.jsonl").write_bytes(orjson.dumps(header) + b"\n")
    report = check(data_dir)
    missing = [r for r in report.invalid if r.reasons == ["segment missing"]]
    assert len(missing) == 1 and f"{10**18 - 1}" in str(missing[0].findings[0])
    assert len(report.files) < 20


def test_the_oldest_segment_deleted_by_hand_is_not_retention(tmp_path: Path) -> None:
    data_dir = build_store(tmp_path / "data", batches=4)
    segment_paths(data_dir)[0].unlink()
    digest_paths(data_dir)[0].unlink()
    result = run_verify(str(data_dir))
    assert result.returncode == 1
    assert "digest missing" in result.stdout


def test_a_key_rotation_keeps_old_digests_verifiable_from_an_older_export(
        tmp_path: Path) -> None:
    data_dir = build_store(tmp_path / "data", batches=2)
    before = tmp_path / "keys-before.pem"
    assert run_cli("keys", "export", "--data-dir", str(data_dir), "--out", str(before)) \
        .returncode == 0
    rotated = run_cli("keys", "rotate", "--data-dir", str(data_dir))
    assert rotated.returncode == 0, rotated.stderr
    with open_store(data_dir, max_segment_bytes=SMALL) as store:
        store.write(events(3))
        store.write(events(3))
    listed = run_cli("keys", "list", "--data-dir", str(data_dir)).stdout.splitlines()
    assert len(listed) == 2  # the old public key stays
    assert sum(line.endswith("(current signing key)") for line in listed) == 1
    assert "key_rotation" in kinds(data_dir)
    result = run_verify(str(data_dir), "--public-key", str(before))
    assert result.returncode == 0, result.stdout
    # An export after the rotation holds both keys: the old one vouched for by the
    # signing key that replaced it (kept beside it), not taken from the key ring.
    after = tmp_path / "keys-after.pem"
    done = run_cli("keys", "export", "--data-dir", str(data_dir), "--out", str(after))
    assert done.returncode == 0 and "left out" not in done.stderr, done.stderr
    assert after.read_text().count("BEGIN PUBLIC KEY") == 2
    assert (data_dir / "keys" / "signing-key.pem.retired.pub").exists()
    assert any(line.endswith("(retired: vouched for by the signing key)") for line in
               run_cli("keys", "list", "--data-dir", str(data_dir)).stdout.splitlines())
    result = run_verify(str(data_dir), "--public-key", str(after))
    assert result.returncode == 0, result.stdout


def test_a_rotation_by_another_user_than_the_data_directorys_owner_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """root's ``keys rotate`` in the data directory of a collector running as ``audit``
    left the new signing key root's alone (0600): the collector's next start failed."""
    from collector.cli import main as cli_main

    data_dir = build_store(tmp_path / "data", batches=1)
    key = data_dir / "keys" / "signing-key.pem"
    before = key.read_bytes()
    owner = data_dir.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)  # someone else (root, say)
    assert cli_main(["keys", "rotate", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "the collector could not read it" in err and "sudo -u" in err
    assert key.read_bytes() == before


def test_a_signing_key_kept_outside_the_data_directory_is_rotated_by_its_owner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        fake_owners: Callable[[dict[Path, int]], None]) -> None:
    """A signing key systemd hands over as a credential (docs/integrity.md, Key custody)
    is root's, kept outside the data directory: root rotates it (the collector's user
    cannot even read it). It was refused, told to run it as the collector's user."""
    from collector.cli import main as cli_main

    data_dir = build_store(tmp_path / "data", batches=1)
    key = tmp_path / "credentials" / "signing-key.pem"
    key.parent.mkdir()
    (data_dir / "keys" / "signing-key.pem").rename(key)
    before = key.read_bytes()
    root = (data_dir / "segments").stat().st_uid + 1  # not the collector's user
    fake_owners({key: root})
    monkeypatch.setattr(os, "geteuid", lambda: root)
    assert cli_main(["keys", "rotate", "--data-dir", str(data_dir),
                     "--signing-key", str(key)]) == 0
    assert key.read_bytes() != before


def test_the_command_suggested_to_rotate_keeps_the_configuration_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``AUDIT_CONFIG=... audit-collector keys rotate`` as root was told to run
    ``sudo -u audit audit-collector keys rotate ... --data-dir ...``: sudo drops
    AUDIT_CONFIG, and with it the signing key the file names."""
    from collector.cli import main as cli_main

    data_dir = build_store(tmp_path / "data", batches=1)
    config = tmp_path / "collector.toml"
    config.write_text(f"data_dir = {str(data_dir)!r}\n")
    monkeypatch.setenv("AUDIT_CONFIG", str(config))
    owner = data_dir.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)  # someone else (root, say)
    assert cli_main(["keys", "rotate"]) == 2
    suggested = capsys.readouterr().err.rsplit(": ", 1)[1]
    assert shlex.split(suggested)[-4:] == ["--config", str(config), "--data-dir",
                                           str(data_dir)]


def test_an_export_after_a_rotation_that_kept_no_list_asks_for_the_old_key(
        tmp_path: Path) -> None:
    """Stores rotated before keys rotate kept its retired keys beside the signing key:
    the export left the old key out and exited 0, and the auditor's verify then called
    every digest it had signed untrusted."""
    from collector.integrity.keys import load_signing_key

    data_dir = build_store(tmp_path / "data", batches=2)
    old = load_signing_key(data_dir / "keys" / "signing-key.pem").id
    assert run_cli("keys", "rotate", "--data-dir", str(data_dir)).returncode == 0
    (data_dir / "keys" / "signing-key.pem.retired.pub").unlink()  # as an older rotation
    with open_store(data_dir, max_segment_bytes=SMALL) as store:
        store.write(events(3))
    out = tmp_path / "keys.pem"
    done = run_cli("keys", "export", "--data-dir", str(data_dir), "--out", str(out))
    assert done.returncode == 2 and f"--include {old}" in done.stderr, done.stderr
    assert not out.exists()
    done = run_cli("keys", "export", "--data-dir", str(data_dir), "--out", str(out),
                   "--include", old)
    assert done.returncode == 0, done.stderr
    result = run_verify(str(data_dir), "--public-key", str(out))
    assert result.returncode == 0, result.stdout


def test_a_start_after_a_rotation_that_kept_no_list_says_what_happened(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Rotated by a version that kept no list of the keys it retired, and not started
    since (the rotation its newest digest): the start said "no digest of this store is
    signed by the signing key ... otherwise the digests may have been replaced", a
    tamper alarm, though the newest digest hands the chain to that very key."""
    from collector.integrity.keys import load_signing_key

    data_dir = build_store(tmp_path / "data", batches=2)
    old = load_signing_key(data_dir / "keys" / "signing-key.pem").id
    assert run_cli("keys", "rotate", "--data-dir", str(data_dir)).returncode == 0
    (data_dir / "keys" / "signing-key.pem.retired.pub").unlink()  # as an older rotation
    new = load_signing_key(data_dir / "keys" / "signing-key.pem").id
    assert kinds(data_dir)[-1] == "key_rotation"
    with caplog.at_level("WARNING", logger="collector"), open_store(data_dir):
        pass
    said = [r.getMessage() for r in caplog.records if r.name.startswith("collector.integrity")]
    assert len(said) == 1, said
    assert "no digest of this store is signed" not in said[0]
    assert f"key rotation from key {old} to the signing key ({new})" in said[0], said
    caplog.clear()
    with caplog.at_level("WARNING", logger="collector"), open_store(data_dir):
        pass  # once: the start signed with the new key
    assert not [r for r in caplog.records if r.name.startswith("collector.integrity")]


def test_keys_rotate_refuses_while_the_collector_runs(tmp_path: Path) -> None:
    data_dir = build_store(tmp_path / "data", batches=1)
    with open_store(data_dir):
        done = run_cli("keys", "rotate", "--data-dir", str(data_dir))
    assert done.returncode == 2
    assert "in use by another process" in done.stderr


def test_the_signing_key_can_live_outside_the_data_directory(tmp_path: Path) -> None:
    elsewhere = tmp_path / "secrets"
    elsewhere.mkdir(mode=0o700)
    key = elsewhere / "audit-signing.pem"
    data_dir = build_store(tmp_path / "data", batches=2, signing_key=key)
    assert key.exists() and (key.stat().st_mode & 0o777) == 0o600
    assert not (data_dir / "keys" / "signing-key.pem").exists()
    assert list((data_dir / "keys").glob("ed25519-*.pub"))  # verify needs no secret
    assert check(data_dir).valid


def test_a_first_start_makes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    data_dir = build_store(tmp_path / "data", batches=1)
    key = data_dir / "keys" / "signing-key.pem"
    assert (key.stat().st_mode & 0o777) == 0o600
    assert ((data_dir / "keys").stat().st_mode & 0o777) == 0o700


def test_a_key_directory_restored_open_to_others_is_warned_of_with_the_chmod(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """keys/ is made 0700, but one restored by hand (0755) was taken as it was, without
    a word, while a signing key file of a loose mode is warned of. Said at each start,
    and by `keys list`, with the chmod to run; a 0700 one is said nothing of."""
    data_dir = build_store(tmp_path / "data", batches=1)
    keys = data_dir / "keys"
    with caplog.at_level("WARNING", "collector.integrity"), open_store(data_dir):
        pass
    assert "key directory" not in caplog.text, caplog.text
    keys.chmod(0o755)
    with caplog.at_level("WARNING", "collector.integrity"), open_store(data_dir):
        pass
    said = [r.getMessage() for r in caplog.records if "key directory" in r.getMessage()]
    assert len(said) == 1, said
    assert "mode 755" in said[0] and f"chmod 700 {keys}" in said[0], said[0]
    listed = run_cli("keys", "list", "--data-dir", str(data_dir))
    assert listed.returncode == 0, listed.stderr
    assert f"note: the key directory {keys} is open to others" in listed.stderr
    assert f"chmod 700 {keys}" in listed.stderr, listed.stderr
    keys.chmod(0o700)
    assert "key directory" not in run_cli("keys", "list", "--data-dir", str(data_dir)).stderr


def _put_in_place_of_a_directory(path: Path, kind: str) -> None:
    """``kind`` at ``path``, where the store keeps a directory (taken away first)."""
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a symbolic link to nothing":
        path.symlink_to(path.with_name(f"{path.name}.gone"))
    elif kind == "a loop of symbolic links":
        path.symlink_to(path.name)  # to itself
    else:
        path.write_text("not a directory\n")
        path.chmod(0o644)


@pytest.mark.parametrize("kind", ["a regular file", "a FIFO", "a symbolic link to nothing",
                                  "a loop of symbolic links"])
@pytest.mark.parametrize("command", [["keys", "list"], ["keys", "export"], ["verify"],
                                     ["keys", "rotate"]])
def test_a_key_directory_that_is_a_file_is_named_for_what_it_is(
        tmp_path: Path, command: list[str], kind: str) -> None:
    """`keys list` said the directory was open to others (mode 644), then that it held
    no keys (is --data-dir right?); verify, that it held no public key; serve, only
    "[Errno 17] File exists"; `keys rotate`, that there was no signing key in it. Each
    says what is there, in the words of the store's other directories, and what to do.
    A symbolic link that leads to no directory (a backup's link restored without its
    target) was said the old ways still, while digests/ and segments/ named it."""
    data_dir = build_store(tmp_path / "data", batches=1)
    keys = data_dir / "keys"
    keys.rename(tmp_path / "keys.bak")
    _put_in_place_of_a_directory(keys, kind)
    says = (f"{keys} is {kind}, where the collector keeps the keys/ directory (the key "
            f"ring: the public keys and, by default, the signing key): look at what it is, "
            f"move it out of the way (`mv {keys} {keys}.aside`), then put keys/ back from "
            f"a backup")
    done = run_cli(*command, "--data-dir", str(data_dir))
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr, done.stderr
    assert "open to others" not in done.stderr, done.stderr
    with pytest.raises(KeyFileError, match=re.escape(says)), open_store(data_dir):
        pass


@pytest.mark.parametrize("kind", ["a regular file", "a FIFO", "a loop of symbolic links"])
@pytest.mark.parametrize("command", [["serve"], ["keys", "rotate"], ["verify"]])
def test_a_digest_directory_that_is_a_file_is_named_for_what_it_is(
        tmp_path: Path, command: list[str], kind: str) -> None:
    """serve's start and `keys rotate` said "[Errno 17] File exists" from the mkdir
    (after warning that nothing was ever signed); verify, that "there is no digests/
    directory: nothing here was ever signed", and went on to a verdict on a store whose
    digests were taken away. Each names it, and what to do."""
    data_dir = build_store(tmp_path / "data", batches=1)
    path = data_dir / "digests"
    shutil.rmtree(path)
    _put_in_place_of_a_directory(path, kind)
    says = (f"{path} is {kind}, where the collector keeps the digests/ directory (the "
            f"signed digests of the segments): look at what it is, move it out of the way "
            f"(`mv {path} {path}.aside`), then put digests/ back from a backup")
    extra = ["--socket", str(data_dir / "c.sock"), "--api-listen", ""] \
        if command == ["serve"] else []
    done = run_cli(*command, "--data-dir", str(data_dir), *extra)
    assert done.returncode in (1, 2), done.stdout + done.stderr
    assert says in done.stderr, done.stderr
    assert "File exists" not in done.stderr and "never signed" not in done.stderr + \
        done.stdout, done.stderr


def test_verify_works_on_an_unpacked_archive(tmp_path: Path) -> None:
    data_dir = build_store(tmp_path / "data", batches=3)
    archive = tmp_path / "audit.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data_dir / "segments", "audit/segments")
        tar.add(data_dir / "digests", "audit/digests")
    trusted = tmp_path / "trusted.pem"
    run_cli("keys", "export", "--data-dir", str(data_dir), "--out", str(trusted))
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "restored", filter="data")
    result = run_verify(str(tmp_path / "restored" / "audit"), "--public-key", str(trusted))
    assert result.returncode == 0, result.stdout + result.stderr


def test_from_and_to_limit_which_segments_are_rehashed(tmp_path: Path) -> None:
    data_dir = build_store(tmp_path / "data", batches=3)
    first = segment_paths(data_dir)[0]
    first.write_bytes(first.read_bytes().replace(b"cred-", b"CRED-", 1))
    assert not check(data_dir).valid
    future = check(data_dir, since_us=2**61)
    assert future.valid
    assert [r.path for r in future.files if r.kind == "segment"] == \
        [f"segments/{segment_paths(data_dir)[-1].name}"]
    result = run_verify(str(data_dir), "--from", "2000-01-01", "--to", "2100-01-01")
    assert result.returncode == 1


def test_a_window_in_which_no_segment_was_written_is_not_a_clean_verdict(
        tmp_path: Path) -> None:
    """Exit 0 says "checked and valid": a window before the first segment checks no
    record, and says so (exit 2), tampered records elsewhere or not."""
    data_dir = build_store(tmp_path / "data", batches=3)
    result = run_verify(str(data_dir), "--from", "2000-01-01", "--to", "2000-01-02")
    assert result.returncode == 2
    assert "no segment was written in this window" in result.stderr
    assert "checked 0 segment file(s)" in result.stdout


def test_a_running_collector_verifies_clean_with_records_not_yet_signed() -> None:
    with short_tmp() as tmp:
        key = tmp / "secrets" / "signing.pem"
        key.parent.mkdir()
        with CollectorProcess(tmp / "data", "--max-segment-bytes", "4KiB", "--signing-key",
                              str(key), "--digest-interval", "1h",
                              env={"AUDIT_API_LISTEN": ""}) as collector:
            conn = RawClient(collector.socket)
            conn.hello()
            conn.batch(1, [wire_line(n) for n in range(30)], list(range(1, 31)))
            conn.close()
            result = run_verify(str(collector.data_dir))
            assert result.returncode == 0, result.stdout + result.stderr
            assert "not signed yet" in result.stdout
        assert key.exists()  # the configured key, not one in the data directory
        assert not (tmp / "data" / "keys" / "signing-key.pem").exists()
        assert run_verify(str(tmp / "data")).returncode == 0  # signed at the stop


def test_verify_reports_progress_on_stderr(tmp_path: Path) -> None:
    data_dir = build_store(tmp_path / "data", batches=2)
    done = subprocess.run([sys.executable, "-m", "collector", "verify", str(data_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    assert "verify: 100%" in done.stderr


def test_verify_in_process_agrees_with_the_command(tmp_path: Path) -> None:
    data_dir = build_store(tmp_path / "data", batches=2)
    assert verify(data_dir).valid and run_verify("--data-dir", str(data_dir)).returncode == 0


def test_keys_rotate_refuses_without_a_key_to_rotate(tmp_path: Path) -> None:
    data_dir = build_store(tmp_path / "data", batches=1)
    done = run_cli("keys", "rotate", "--data-dir", str(data_dir), "--signing-key",
                   str(tmp_path / "not-mounted" / "key.pem"))
    assert done.returncode == 2 and "nothing to rotate" in done.stderr
    assert check(data_dir).valid


def test_an_emptied_store_is_no_verdict(tmp_path: Path) -> None:
    data_dir = build_store(tmp_path / "data", batches=2)
    for path in segment_paths(data_dir) + digest_paths(data_dir):
        path.unlink()
    result = run_verify(str(data_dir))
    assert result.returncode == 2, result.stdout
    assert "nothing to verify" in result.stderr


def test_a_link_loop_in_segments_is_reported_and_hides_nothing(tmp_path: Path) -> None:
    """A link loop named like a segment is a file verify cannot read: reported INVALID,
    never a crash, and never a "no verdict" (exit 2) that would hide a modified record
    elsewhere (found by a review: the loop turned exit 1 into 2)."""
    data_dir = build_store(tmp_path / "data", batches=2)
    first = segment_paths(data_dir)[0]
    first.write_bytes(first.read_bytes().replace(b"cred-", b"CRED-", 1))
    loop = data_dir / "segments" / "segment-00000099-20261126T000000Z.jsonl"
    os.symlink(data_dir / "segments" / "x", loop)
    os.symlink(loop, data_dir / "segments" / "x")
    result = run_verify(str(data_dir))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert f"INVALID  segments/{first.name}  record modified" in result.stdout
    assert f"INVALID  segments/{loop.name}  hash mismatch: cannot be read" in result.stdout


def test_an_emptied_store_checked_with_an_anchor_is_invalid(tmp_path: Path) -> None:
    """An anchor exists to catch exactly this: a verdict (exit 1), not "nothing to
    verify" (exit 2)."""
    data_dir = build_store(tmp_path / "data", batches=2)
    anchor = lines_of(digest_paths(data_dir)[-1])[-1].rsplit(b'"signature":"', 1)[1]
    anchor = anchor.split(b'"')[0]
    assert run_verify(str(data_dir), "--anchor", anchor.decode()).returncode == 0
    for path in segment_paths(data_dir) + digest_paths(data_dir):
        path.unlink()
    result = run_verify(str(data_dir), "--anchor", anchor.decode())
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "chain broken" in result.stdout


def test_an_anchor_that_is_no_signature_is_a_usage_error(tmp_path: Path) -> None:
    """A mistyped anchor is not evidence of tampering: exit 2 and why, not INVALID."""
    data_dir = build_store(tmp_path / "data", batches=1)
    for anchor in ("garbage", "", "QUJD"):
        result = run_verify(str(data_dir), "--anchor", anchor)
        assert result.returncode == 2, (anchor, result.stdout, result.stderr)
        assert "is not a digest signature" in result.stderr


def test_two_directories_to_verify_is_a_usage_error(tmp_path: Path) -> None:
    """PATH won over --data-dir without a word: the other directory went unchecked."""
    data_dir = build_store(tmp_path / "data", batches=1)
    result = run_verify(str(data_dir), "--data-dir", str(tmp_path / "other"))
    assert result.returncode == 2 and "give one" in result.stderr
    assert run_verify(str(data_dir), "--data-dir", str(data_dir)).returncode == 0


@pytest.mark.parametrize("rotated_before", [False, True])
def test_a_rotation_that_fails_leaves_the_store_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rotated_before: bool) -> None:
    """The rotation is recorded (a digest signed by the old key naming the new one) only
    once the new key is on disk beside the old, and a failure before the record (here a
    full disk refusing the key_rotation digest) leaves no trace: before, it left the new
    public key in the key ring, a key that never signed anything; and the signing key
    listed in its own ``.retired.pub`` as a key rotated away from, which no digest says
    (``rotated_before``: a list already there, to be kept as it was); and the disk
    error came out bare. A failure writing the new key after the record left a store
    whose next digests the old key signed, against its own record."""
    from collector.integrity import commands
    from collector.integrity.errors import IntegrityError

    data_dir = build_store(tmp_path / "data", batches=2)
    keys = data_dir / "keys"
    if rotated_before:
        assert commands._rotate(data_dir, None, 300.0) == 0
    files = {path.name: path.read_bytes() for path in keys.iterdir()}
    digests_before = kinds(data_dir)
    full_disk = refuse_digests(monkeypatch, "key_rotation")
    with pytest.raises(IntegrityError, match="could not be recorded .*: nothing was "
                       "changed, .*; make room in "):
        commands._rotate(data_dir, None, 300.0)
    full_disk["on"] = False
    assert {path.name: path.read_bytes() for path in keys.iterdir()} == files
    assert kinds(data_dir) == digests_before
    with open_store(data_dir) as store:
        store.write(events(3))
    result = run_verify(str(data_dir))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_rotation_refused_for_permissions_is_not_told_to_make_room(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every error recording the rotation was advised "make room", a permission
    problem too."""
    import errno

    from collector.integrity import commands, digests
    from collector.integrity.errors import IntegrityError

    data_dir = build_store(tmp_path / "data", batches=2)
    real = digests.append

    def refused(directory: Path, name: str, line: bytes) -> Path:
        if b"key_rotation" in line:
            raise PermissionError(errno.EACCES, "Permission denied", str(directory / name))
        return real(directory, name, line)

    monkeypatch.setattr(digests, "append", refused)
    with pytest.raises(IntegrityError) as raised:
        commands._rotate(data_dir, None, 300.0)
    assert "make room" not in str(raised.value)
    assert "let the signing key's owner write" in str(raised.value)


def test_keys_rotate_again_on_a_file_system_without_hard_links(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``keys rotate`` keeps the list of retired keys as it was under a hard link, to put
    it back if the rotation cannot be recorded. Where the file system has none (vfat,
    some network and FUSE mounts: EPERM), every rotation after the first failed, said
    as a full disk ("make room"), with room to spare. Now a copy is kept instead, put
    back as the link was."""
    import errno

    from collector.integrity import commands
    from collector.integrity.errors import IntegrityError
    from collector.integrity.keys import read_retired_keys

    def no_links(src: object, dst: object, **_: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted", str(dst))

    data_dir = build_store(tmp_path / "data", batches=2)
    keys = data_dir / "keys"
    assert commands._rotate(data_dir, None, 300.0) == 0
    monkeypatch.setattr(os, "link", no_links)
    files = {path.name: path.read_bytes() for path in keys.iterdir()}
    full_disk = refuse_digests(monkeypatch, "key_rotation")
    with pytest.raises(IntegrityError, match="could not be recorded \\(No space"):
        commands._rotate(data_dir, None, 300.0)
    assert {path.name: path.read_bytes() for path in keys.iterdir()} == files
    full_disk["on"] = False
    assert commands._rotate(data_dir, None, 300.0) == 0
    assert len(read_retired_keys(keys / "signing-key.pem")) == 2
    assert not [p.name for p in keys.iterdir() if p.name.endswith(".before")]
    with open_store(data_dir) as store:
        store.write(events(3))
    result = run_verify(str(data_dir))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_store_of_segments_without_digests_is_signed_on_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A backup restored from segments/ alone: the start made a new key and signed on
    with nothing said but 'generated a new signing key', and verify then called every
    older segment INVALID for good, a surprise found only at the next audit."""
    data_dir = build_store(tmp_path / "data", batches=3)
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copytree(data_dir / "segments", restored / "segments")
    with caplog.at_level("WARNING", logger="collector"), open_store(restored):
        pass
    assert any("no digests: never signed, or their digests were not copied" in r.message
               for r in caplog.records), caplog.text


def test_a_replaced_lock_file_neither_hides_the_collector_nor_lets_a_second_one_in(
        tmp_path: Path) -> None:
    """`mv store.lock old.lock; touch store.lock` under a running collector: verify took
    it for stopped (and skipped the checks it makes next to a live one), and a second
    collector started on the same data, writing a second digest chain."""
    from collector.integrity.commands import collector_running
    from collector.storage.data_dir_lock import lock_data_dir
    from collector.storage.errors import DataDirInUseError

    data_dir = build_store(tmp_path / "data", batches=1)
    with open_store(data_dir):
        (data_dir / "store.lock").rename(data_dir / "old.lock")
        (data_dir / "store.lock").touch()
        assert collector_running(data_dir)
        with pytest.raises(DataDirInUseError):
            lock_data_dir(data_dir)
    assert not collector_running(data_dir)
    lock_data_dir(data_dir).close()


def test_a_key_rotation_killed_before_its_end_is_finished_by_the_next_start(
        tmp_path: Path) -> None:
    """Killed after recording the rotation, before putting the new key in place: the
    collector went on signing with the old key, the rotation undone without a word."""
    from collector.integrity.keys import load_signing_key

    data_dir = build_store(tmp_path / "data", batches=2)
    key_path = data_dir / "keys" / "signing-key.pem"
    old = load_signing_key(key_path).id
    killed = ("import os, sys\nfrom collector import cli\nfrom collector.integrity import keys\n"
              "keys.install_signing_key = lambda *a: os._exit(9)\n"
              "cli.main(['keys', 'rotate', '--data-dir', sys.argv[1]])\n")
    done = run_python(killed, str(data_dir))
    assert done.returncode in (-9, 9), done.stderr
    assert "key_rotation" in kinds(data_dir) and load_signing_key(key_path).id == old
    with open_store(data_dir, max_segment_bytes=SMALL) as store:
        store.write(events(3))
    new = load_signing_key(key_path).id
    assert new != old and not key_path.with_name("signing-key.pem.tmp").exists()
    newest = [line for p in digest_paths(data_dir) for line in lines_of(p)][-1]
    assert f'"key":"{new}"'.encode() in newest
    exported = tmp_path / "keys.pem"
    assert run_cli("keys", "export", "--data-dir", str(data_dir), "--out",
                   str(exported)).returncode == 0
    result = run_verify(str(data_dir), "--public-key", str(exported))
    assert result.returncode == 0, result.stdout


def test_a_window_checks_the_segment_written_before_the_clock_stepped_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Segment 2, created at 09:00, took records until the clock stepped back to 08:20
    and segment 3 was created then: its span "from 09:00 to 08:20" overlapped no window,
    so a window at 09:00-09:10 left it out and a record modified in it went unseen
    (verify said valid)."""
    set_clock = wall_clock_at(monkeypatch)
    data_dir = tmp_path / "data"
    with open_store(data_dir, max_segment_bytes=SMALL) as store:
        for minutes in (0, 60, 20, 120):  # a batch a segment; stepped back before the 3rd
            set_clock(minutes)
            store.write(events(3))
    second = segment_paths(data_dir)[1]
    assert "20270115T090000Z" in second.name
    tamper(second)
    report = check(data_dir, since_us=minutes_us(60), until_us=minutes_us(70))
    assert not report.valid
    assert [r.path for r in report.invalid] == [f"segments/{second.name}"]


def test_a_window_checks_a_segment_the_clock_stepped_back_in_across_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Segment 1 (created 08:00) took a record at 08:40, the collector stopped, its
    clock was set back to 08:10 and segment 2 created at 08:30: the headers alone say
    segment 1 was written 08:00-08:30, and a window at 08:35-08:45 left it out. The
    clock's readings its digests signed (a stop at 08:40, a start at 08:10) show it
    went back."""
    set_clock = wall_clock_at(monkeypatch)
    data_dir = tmp_path / "data"
    big = 64 * 1024  # no rotation until the test asks for one
    with open_store(data_dir, max_segment_bytes=big) as store:
        store.write(events(1))
        set_clock(40)
        store.write(events(1))
    set_clock(10)
    with open_store(data_dir, max_segment_bytes=big) as store:
        store.write(events(1))
    set_clock(30)
    with open_store(data_dir, max_segment_bytes=SMALL) as store:
        store.write(events(3))  # segment 1 is over SMALL: this rotates to segment 2
    first, second = segment_paths(data_dir)
    assert "20270115T080000Z" in first.name and "20270115T083000Z" in second.name
    tamper(first)
    report = check(data_dir, since_us=minutes_us(35), until_us=minutes_us(45))
    assert [r.path for r in report.invalid] == [f"segments/{first.name}"]


def test_a_window_still_leaves_out_segments_written_outside_it_by_a_clock_that_went_forward(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a segment during which the clock went back is in every window: one written
    before a step back, with a clock going forward, is left out of a later window."""
    set_clock = wall_clock_at(monkeypatch)
    data_dir = tmp_path / "data"
    with open_store(data_dir, max_segment_bytes=SMALL) as store:
        for minutes in (0, 60, 20, 120):
            set_clock(minutes)
            store.write(events(3))
    checked = [r.path for r in check(data_dir, since_us=minutes_us(130)).files
               if r.kind == "segment"]
    names = [p.name for p in segment_paths(data_dir)]
    # Segment 2 (09:00, then 08:20) is in every window; 1 (08:00 to 09:00) and 3 (08:20
    # to 10:00) are not in this one.
    assert checked == [f"segments/{names[1]}", f"segments/{names[3]}"]
