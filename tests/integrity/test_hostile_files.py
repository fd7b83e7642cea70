"""What someone with write access to the data directory can put in it to make ``verify``
hang, crash, flood its output or mislead an anchor check: each is a clear verdict in
bounded time and memory instead (an integrity review, 2026-11-26)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.integrity import digests
from collector.integrity.findings import (
    CHAIN_BROKEN,
    DIGEST_MISSING,
    MAX_LISTED,
    RECORD_MODIFIED,
    SIGNATURE_INVALID,
)
from collector.storage.errors import StorageError
from collector.storage.records import created_micros
from collector.storage.segments import list_segment_files
from tests.integrity.helpers import (
    build_store,
    check,
    copy_of,
    digest_paths,
    lines_of,
    reasons,
    run_verify,
    segment_paths,
    write_lines,
)

FAR_SEGMENT = "segment-00000099-20261126T180100Z"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = build_store(tmp_path_factory.mktemp("store") / "data")
    assert check(data_dir).valid
    return data_dir


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Iterator[Path]:
    yield copy_of(pristine, tmp_path / "copy")


# -- files that are no files -------------------------------------------------------------
@pytest.mark.parametrize("where", ["digest FIFO", "segment FIFO", "digest /dev/zero",
                                   "segment /dev/zero"])
def test_a_fifo_or_a_device_in_place_of_a_file_is_reported_not_waited_on(
        store: Path, where: str) -> None:
    """A FIFO blocked verify's open() for good; a link to /dev/zero read until memory ran
    out. Both are files verify cannot read: INVALID, at once."""
    if where.startswith("digest"):
        path = store / "digests" / f"{FAR_SEGMENT}.digests.jsonl"
    else:
        path = store / "segments" / f"{FAR_SEGMENT}.jsonl"
    if where.endswith("FIFO"):
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    result = run_verify("-q", str(store))  # its own timeout (120 s) fails a hang
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{FAR_SEGMENT}" in result.stdout and "not a regular file" in result.stdout, \
        result.stdout


def put_junk(path: Path, junk: str) -> str:
    """``junk`` at ``path``; what verify says it is."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if junk == "fifo":
        os.mkfifo(path)
        return "not a regular file"
    if junk == "EC key":
        path.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return "not an Ed25519 public key"
    path.write_text("not a key\n")
    return "it holds no PEM public key"


@pytest.mark.parametrize("junk", ["fifo", "text", "EC key"])
def test_a_key_ring_file_that_is_no_public_key_is_named_and_left_out(
        store: Path, junk: str) -> None:
    """A file named like a key ring file that holds no Ed25519 public key stopped verify
    with no verdict (exit 2), advising `keys export`, which does nothing about it; and
    stopped the collector's start and `keys list`. It is left out, named as no public
    key, with how to move it away; verify reaches its verdict, the rest goes on."""
    from tests.collector.storage_helpers import open_store
    from tests.integrity.helpers import run_cli

    path = store / "keys" / "ed25519-0123456789abcdef.pub"
    what = put_junk(path, junk)
    result = run_verify(str(store))
    assert result.returncode == 0, result.stdout + result.stderr
    note = next(line for line in result.stdout.splitlines() if str(path) in line)
    assert note.startswith(f"note: {path} is not a public key (") and what in note, note
    assert f"mv {path} " in note and "keys export" not in note, note
    listed = run_cli("keys", "list", "--data-dir", str(store))
    assert listed.returncode == 0 and f"{path} is not a public key" in listed.stderr, \
        listed.stderr
    with open_store(store):
        pass
    assert check(store).valid


def test_a_key_ring_the_auditor_cannot_read_says_to_pass_the_keys(
        store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An auditor of the data directory's group (docs/api.md) reads every file but
    ``keys/`` (0700, the collector's user's): verify said only "cannot read the data
    directory: Permission denied", not that ``--public-key`` is the way (with it, it
    needs nothing of ``keys/``). (As root, the directory's mode denies nothing: the
    denial is the key ring's read.)"""
    from collector.integrity.keys import KeyRing, read_public_keys
    from collector.integrity.verify import VerifyError, verify

    def denied(ring: KeyRing) -> None:
        raise PermissionError(13, "Permission denied", str(store / "keys"))

    exported = read_public_keys(store / "keys" / next(
        p.name for p in (store / "keys").iterdir() if p.name.startswith("ed25519-")))
    monkeypatch.setattr(KeyRing, "read", denied)
    with pytest.raises(VerifyError, match=r"cannot read the key ring .*keys \(Permission "
                                          r"denied: it is the collector's user's alone\): "
                                          r"pass the public keys with --public-key FILE"):
        verify(store)
    assert verify(store, public_keys=exported).valid


def test_a_key_ring_file_this_user_cannot_read_says_so_not_to_move_it(
        store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file of ``keys/`` the reader may not read (EACCES) was named "not a public key",
    with advice to move it out of the key ring: the collector's own key, for a
    permissions problem. It is said to be unreadable by this user, with the ways round
    it: --public-key from `keys export`, or running as the collector's user or a member
    of its group. (As root, no mode denies anything: the denial is the file's read.)"""
    from collector.integrity import keys

    unreadable = next(p for p in (store / "keys").iterdir() if p.name.startswith("ed25519-"))
    other = store / "keys" / "ed25519-0123456789abcdef.pub"  # the one key verify can use
    other.write_bytes(unreadable.read_bytes())
    real_read = keys.read_regular

    def denied(path: Path, limit: int) -> bytes:
        if Path(path) == unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path, limit)

    monkeypatch.setattr(keys, "read_regular", denied)
    notes = [n for n in check(store).notes if str(unreadable) in n]
    assert len(notes) == 1, notes
    note = notes[0]
    assert note.startswith(f"{unreadable} cannot be read by this user (Permission denied"), note
    assert "--public-key FILE" in note and "keys export" in note, note
    assert "collector's user" in note and "member of" in note, note
    assert "not a public key" not in note and "mv " not in note, note


def test_a_damaged_list_of_retired_keys_is_named_with_what_to_do(store: Path) -> None:
    """The list of the keys the signing key replaced (``<key>.retired.pub``) holding no
    key stopped `keys export` with advice to make the file with `keys export`: the
    command that had just failed on it. The list is kept with the signing key."""
    from collector.integrity.commands import _rotate
    from tests.integrity.helpers import run_cli

    assert _rotate(store, None, 300.0) == 0
    retired = store / "keys" / "signing-key.pem.retired.pub"
    put_junk(retired, "text")
    result = run_cli("keys", "export", "--data-dir", str(store), "--out",
                     str(store / "exported.pem"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{retired} cannot be used (it holds no PEM public key" in result.stderr, \
        result.stderr
    assert "put it back from a backup of the signing key" in result.stderr, result.stderr
    assert "with `audit-collector keys export`" not in result.stderr, result.stderr


def test_junk_in_place_of_the_signing_keys_public_key_is_written_over_at_start(
        store: Path) -> None:
    """Left out of the ring, the junk took the signing key's public key with it: verify
    (from the ring) called every digest untrusted, for good, since start-up never
    wrote a key ring file that was there already. It writes the key again."""
    from collector.integrity.keys import read_public_keys
    from tests.collector.storage_helpers import open_store

    path = next((store / "keys").glob("ed25519-*.pub"))
    key_id = path.name.removeprefix("ed25519-").removesuffix(".pub")
    put_junk(path, "text")
    with open_store(store):
        pass
    assert [key.id for key in read_public_keys(path)] == [key_id]
    assert check(store).valid


def test_junk_in_place_of_a_replaced_keys_public_key_is_written_over_at_start(
        store: Path) -> None:
    """The same for a key the signing key replaced (``keys rotate``): the signing key's
    ``.retired.pub`` holds it, yet its ring file, junk, was left as it was, and verify
    (from the ring) reported everything that key signed as untrusted, for good, the
    note asking for a backup of a key the collector keeps beside its signing key."""
    from collector.integrity.commands import _rotate
    from collector.integrity.keys import load_signing_key, read_public_keys
    from tests.collector.storage_helpers import open_store

    replaced = load_signing_key(store / "keys" / "signing-key.pem").id
    assert _rotate(store, None, 300.0) == 0
    path = store / "keys" / f"ed25519-{replaced}.pub"
    put_junk(path, "text")
    assert not check(store).valid  # left out: what it signed is untrusted
    with open_store(store):
        pass
    assert [key.id for key in read_public_keys(path)] == [replaced]
    assert check(store).valid


def test_a_directory_in_place_of_the_signing_keys_public_key_is_named_with_what_to_do(
        store: Path) -> None:
    """Start-up writes the signing key's public key over junk of its name; a directory
    there cannot be written over, and the start failed with a bare 'Is a directory'
    naming a temporary file (``.ed25519-<id>.pub.tmp``), not the directory to move."""
    from collector.integrity.errors import KeyFileError
    from tests.collector.storage_helpers import open_store

    path = next((store / "keys").glob("ed25519-*.pub"))
    path.unlink()
    path.mkdir()
    with pytest.raises(KeyFileError, match=f"cannot write .* to {path} .*: mv {path} "), \
            open_store(store):
        pass
    assert not list((store / "keys").glob(".*.tmp"))


# -- digits that are not ASCII ------------------------------------------------------------
def test_a_header_time_with_a_superscript_digit_is_no_crash(store: Path) -> None:
    """``"²".isdigit()`` is True and ``int("²")`` raises: verify printed a traceback and
    exited 1 (INVALID) with no report."""
    stray = store / "segments" / "notes.txt"
    stray.write_bytes(b'{"segment":{"id":"x","seq":7,"previous":"","schema":1,"created":'
                      b'"2026-11-26T01:07:10.12345\xc2\xb2Z","chain":""}}\n')
    result = run_verify("-q", str(store))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 1), result.stderr
    with pytest.raises(StorageError):
        created_micros("2026-11-26T01:07:10.12345\u00b2Z")


def test_other_digits_do_not_count_as_ascii_ones() -> None:
    """Arabic-Indic digits passed ``isdigit`` and ``\\d`` and int() read them: a time, a
    port or a file name written in them meant the number."""
    from collector.options import split_host_port
    from collector.storage.filters import QueryError, parse_time

    with pytest.raises(StorageError):
        created_micros("2026-11-26T01:07:10.\u0661\u0662\u0663\u0664\u0665\u0666Z")
    with pytest.raises(ValueError, match="host:port"):
        split_host_port("localhost:\u0667\u0661\u0660\u0660")
    for text in ("\u0661\u0662h", "\u0662\u0660\u0662\u0666-11-26-01-02-03"):
        with pytest.raises(QueryError):
            parse_time(text, what="--since", now_us=0)


def test_a_file_named_with_other_digits_is_no_segment_or_digest_file(store: Path) -> None:
    arabic_one = "\u0660" * 7 + "\u0661"  # "00000001" in Arabic-Indic digits
    name = f"segment-{arabic_one}-20261126T180100Z"
    (store / "segments" / f"{name}.jsonl").write_bytes(b"")
    (store / "digests" / f"{name}.digests.jsonl").write_bytes(b"")
    assert all(f.path.name.isascii() for f in list_segment_files(store / "segments"))
    assert all(p.name.isascii() for _, p in digests.list_digest_files(store / "digests"))


# -- output and time bounded by what is there, not by what a line claims -------------------
def test_a_forged_huge_seq_after_the_active_segment_is_reported_in_bounded_time(
        store: Path) -> None:
    """A line claiming seq 9e18 made verify count 9e18 'missing' records one by one."""
    active = segment_paths(store)[-1]
    lines = lines_of(active)
    lines.append(b'{"seq":9000000000000000000,"chain":"' + b"0" * 64 + b'"}\n')
    write_lines(active, lines)
    report = check(store)
    found = [str(f) for r in report.invalid for f in r.findings]
    assert any("9000000000000000000" in f for f in found), found
    assert not any("missing" in f and "9,000,000" in f for f in found), found


def test_millions_of_damaged_lines_are_counted_not_listed(store: Path) -> None:
    """5 MB of newlines appended to a sealed segment printed 5 million findings (680 MB,
    1.7 GB of memory)."""
    path = segment_paths(store)[2]
    with path.open("ab") as f:
        f.write(b"\n" * 1_000_000)
    report = check(store)
    (result,) = [r for r in report.invalid if path.name in r.path]
    modified = [f for f in result.findings if f.reason == RECORD_MODIFIED]
    assert len(modified) == MAX_LISTED
    assert result.unlisted == {RECORD_MODIFIED: 1_000_000 - MAX_LISTED}
    printed = run_verify("-q", str(store))
    assert printed.returncode == 1 and len(printed.stdout) < 50_000, len(printed.stdout)
    assert f"record modified: {1_000_000 - MAX_LISTED:,} more like these" in printed.stdout


# -- signatures and anchors ----------------------------------------------------------------
def _respell_last_signature(store: Path) -> tuple[Path, str]:
    """The newest digest's signature with the spare bits of its last base64 character
    set: the same 64 bytes, another text. Returns the digest file and the original."""
    path = digest_paths(store)[-1]
    lines = lines_of(path)
    at = lines[-1].rfind(b'"signature":"') + len(b'"signature":"')
    original = lines[-1][at:].split(b'"')[0].decode()
    assert original.endswith("==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = original[-3]
    respelled = original[:-3] + alphabet[alphabet.index(last) ^ 1] + "=="
    assert base64.b64decode(respelled) == base64.b64decode(original)
    lines[-1] = lines[-1].replace(original.encode(), respelled.encode())
    write_lines(path, lines)
    return path, original


def test_a_signature_respelled_in_base64_is_an_invalid_signature(store: Path) -> None:
    path, _ = _respell_last_signature(store)
    found = reasons(check(store))
    assert SIGNATURE_INVALID in found[f"digests/{path.name}"], found


def test_an_anchor_matches_by_the_signature_bytes(store: Path) -> None:
    """An anchor kept with its spare base64 bits set (by a tool that re-encoded it) still
    names the digest: compared as text, it read 're-signed'."""
    newest = digests.read_file(digest_paths(store)[-1]).digests[-1]
    canonical = base64.b64encode(newest.signature).decode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    with_spare_bits = canonical[:-3] + alphabet[alphabet.index(canonical[-3]) ^ 1] + "=="
    assert with_spare_bits != canonical
    assert base64.b64decode(with_spare_bits) == newest.signature
    assert check(store, anchors=[with_spare_bits]).valid


def test_an_anchor_older_than_retention_says_so(tmp_path: Path) -> None:
    """The anchored digest went with its segment by retention: no proof of re-signing,
    and the verdict says which of the two it can be."""
    data_dir = tmp_path / "data"
    build_store(data_dir, batches=8, retention_bytes=4 * 2048)
    assert len(segment_paths(data_dir)) < 8, "retention deleted nothing"
    report = check(data_dir)
    assert report.valid, reasons(report)
    oldest_kept = report.first_digest
    assert oldest_kept is not None and oldest_kept.n > 1
    gone = base64.b64encode(b"\x01" * 64).decode()
    (anchor,) = [r for r in check(data_dir, anchors=[gone]).files if r.kind == "anchor"]
    assert anchor.reasons == [CHAIN_BROKEN]
    assert f"oldest digest kept is #{oldest_kept.n}" in anchor.findings[0].detail


def test_an_emptied_digest_file_is_still_missing_digests(store: Path) -> None:
    """(Unchanged by reading files in pieces: an empty file is no digests.)"""
    path = digest_paths(store)[1]
    path.write_bytes(b"")
    assert DIGEST_MISSING in reasons(check(store))[f"digests/{path.name}"]


@pytest.mark.parametrize("kind", ["FIFO", "/dev/zero"])
def test_a_fifo_or_a_device_in_place_of_a_sealed_segment_does_not_hang_the_start(
        store: Path, kind: str) -> None:
    """verify refused them, but the start-up's index catch-up read the file with a
    plain open(): stuck for good on a FIFO, reading /dev/zero until memory ran out."""
    from tests.e2e.harness import run_python

    victim = segment_paths(store)[2]
    victim.unlink()
    if kind == "FIFO":
        os.mkfifo(victim)
    else:
        victim.symlink_to("/dev/zero")
    (store / "index.sqlite").unlink()  # the start indexes every segment again
    code = ("import sys\nfrom pathlib import Path\nfrom tests.collector.storage_helpers "
            "import open_store\nwith open_store(Path(sys.argv[1])):\n    pass\n")
    done = run_python(code, str(store))
    assert done.returncode != 0 and "not a regular file" in done.stderr, done.stderr[-2000:]


def test_the_report_counts_in_the_singular_for_one(tmp_path: Path) -> None:
    import io

    from collector.integrity.commands import print_report
    from collector.integrity.findings import FileResult, Report

    out = io.StringIO()
    report = Report(tmp_path, [FileResult("d-1", "digests", 1, records=1),
                               FileResult("s-1", "segment", 1, records=1, size=1),
                               FileResult("s-2", "segment", 2, records=2, size=2)], [], "")
    print_report(report, out, quiet=False)
    text = out.getvalue()
    assert "(1 digest)" in text and "(1 record, 1 byte)" in text
    assert "(2 records, 2 bytes)" in text
