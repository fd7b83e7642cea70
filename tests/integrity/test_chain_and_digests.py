"""The record chain as the store writes it, the digest lines as the ledger signs them,
and when the ledger writes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector.integrity import chain, digests
from collector.integrity import ledger as ledger_module
from collector.integrity.errors import DigestFormatError, KeyFileError
from collector.integrity.keys import SigningKey, parse_public_keys
from collector.integrity.ledger import Ledger
from collector.storage.records import encode_events, record_lines
from collector.storage.segments import ActiveSegment
from collector.store import StorageSettings
from tests.collector.storage_helpers import event, events, open_store, wait_until
from tests.e2e.harness import outcome_within
from tests.integrity.helpers import SMALL, digest_paths, lines_of, segment_paths


# -- the chain ---------------------------------------------------------------------------
def test_each_record_hashes_the_previous_hash_and_its_own_bytes() -> None:
    lines, _ = record_lines(encode_events([event(1), event(2)]), 7, "src", None, 0,
                            chain.GENESIS)
    first, second = (chain.split(line) for line in lines)
    assert first is not None and second is not None
    assert first[1] == chain.link(chain.GENESIS, first[0])
    assert second[1] == chain.link(first[1], second[0])
    assert orjson.loads(lines[0])["chain"] == first[1].decode()
    assert list(orjson.loads(lines[0]))[-4:] == ["seq", "source", "source_seq", "chain"]


def test_without_a_chain_value_records_have_no_chain_field() -> None:
    [line], _ = record_lines(encode_events([event(1)]), 1, "", None, 0)
    assert "chain" not in orjson.loads(line) and chain.split(line) is None


@pytest.mark.parametrize("line", [
    b'{"seq":1}\n',
    b'{"seq":1,"chain":"' + b"g" * 64 + b'"}\n',  # not hex
    b'{"seq":1,"chain":"' + b"a" * 63 + b'"}\n',  # too short
    b'{"seq":1,"chain":"' + b"a" * 64 + b'"} \n',  # not at the end
])
def test_a_line_without_a_well_formed_chain_field_is_not_chained(line: bytes) -> None:
    assert chain.split(line) is None


def test_the_chain_runs_across_segments_through_the_header(tmp_path: Path) -> None:
    with open_store(tmp_path, max_segment_bytes=SMALL) as store:
        store.write(events(3))
        store.write(events(3))
    first, second = segment_paths(tmp_path)[:2]
    last_of_first = chain.chain_of(lines_of(first)[-1])
    assert last_of_first is not None
    assert orjson.loads(lines_of(second)[0])["segment"]["chain"] == last_of_first.decode()
    assert orjson.loads(lines_of(first)[0])["segment"]["chain"] == chain.GENESIS.decode()


def test_chaining_can_be_switched_off_to_measure_its_cost(tmp_path: Path) -> None:
    with open_store(tmp_path, chain=False) as store:
        store.write(events(2))
        assert store.stats()["integrity"] is None
    assert all("chain" not in orjson.loads(line) for line in lines_of(segment_paths(tmp_path)[0]))
    assert not (tmp_path / "digests").exists() and not (tmp_path / "keys").exists()


def test_a_digest_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="digest_interval"):
        StorageSettings(tmp_path, digest_interval=0)


# -- digest lines ------------------------------------------------------------------------
def key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.generate(), Path("test-key"))


def body(**fields: Any) -> dict[str, Any]:
    state = digests.SegmentState("segment-00000001-20261126T000000Z.jsonl", "ab", 1, "0" * 64)
    return {"digest": 1, "n": 1, "kind": "checkpoint", "time": "2026-11-26T00:00:00.000000Z",
            "key": "k", "previous": "", **state.fields(), "head": state.name,
            "interval_ms": 1000, **fields}


def test_a_signed_line_parses_back_and_its_signature_covers_its_bytes() -> None:
    signer = key()
    line = digests.sign(body(key=signer.id), signer)
    parsed = digests.parse(line)
    assert parsed.n == 1 and parsed.kind == "checkpoint"
    assert signer.public.verifies(parsed.signature, parsed.message)
    edited = digests.parse(line.replace(b'"n":1', b'"n":2'))
    assert not signer.public.verifies(edited.signature, edited.message)


@pytest.mark.parametrize("line", [
    b"garbage\n",
    b'{"digest":1,"n":1}\n',
    b'{"digest":1,"n":1,"signature":"!!"}\n',
])
def test_a_line_that_is_not_a_signed_digest_is_refused(line: bytes) -> None:
    with pytest.raises(DigestFormatError):
        digests.parse(line)


def test_a_digest_of_unknown_kind_or_wrong_field_types_is_refused() -> None:
    signer = key()
    with pytest.raises(DigestFormatError, match="kind"):
        digests.parse(digests.sign(body(kind="party"), signer))
    with pytest.raises(DigestFormatError, match="records"):
        digests.parse(digests.sign(body(records="3"), signer))


def test_public_key_files_need_at_least_one_ed25519_key() -> None:
    with pytest.raises(KeyFileError, match="keys export"):
        parse_public_keys(b"nothing here", "trusted.pem")
    signer = key()
    both = b"# first\n" + signer.public.pem() + b"# second\n" + key().public.pem()
    first, second = parse_public_keys(both, "x")
    assert first.id == signer.id and second.id != signer.id


# -- when the ledger writes digests ------------------------------------------------------
def digest_kinds(data_dir: Path) -> list[str]:
    found = [digests.parse(line) for p in digest_paths(data_dir) for line in lines_of(p)]
    return [g.body.get("why", g.kind) for g in sorted(found, key=lambda g: g.n)]


def test_checkpoints_follow_the_interval_while_records_arrive(tmp_path: Path) -> None:
    with open_store(tmp_path, digest_interval=0.2) as store:
        store.write(events(2))
        wait_until(lambda: digest_kinds(tmp_path).count("interval") == 1)
        store.write(events(2))
        wait_until(lambda: digest_kinds(tmp_path).count("interval") == 2)
        assert store.stats()["integrity"]["unsigned_records"] == 0
    assert digest_kinds(tmp_path) == ["start", "interval", "interval", "stop"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return 1_795_650_000_000_000_000 + int(self.now * 1e9)


def test_records_wait_at_most_one_interval_for_a_checkpoint_and_idleness_signs_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(ledger_module, "time", clock)
    ledger = Ledger.open(tmp_path, None, interval=300.0)
    (tmp_path / "segments").mkdir()
    active = ActiveSegment.create(tmp_path / "segments", 1, "", chain=chain.GENESIS.decode())
    ledger.attach(active.path, active.header)
    ledger.started([], active)

    def append_a_record() -> None:
        data = b'{"seq":1}\n'  # the ledger only hashes what was written
        ledger.appended(data, active.size + len(data), 1, (1, "a", 0),
                        (1, "a", 0), chain.GENESIS)

    clock.now += 3600
    ledger.tick(active)  # an hour idle: nothing new to sign
    assert digest_kinds(tmp_path) == ["start"]
    append_a_record()
    ledger.tick(active)  # the first record after a quiet spell is signed at once
    assert digest_kinds(tmp_path) == ["start", "interval"]
    append_a_record()
    clock.now += 299
    ledger.tick(active)  # the next one waits for the interval
    assert digest_kinds(tmp_path) == ["start", "interval"]
    clock.now += 1
    ledger.tick(active)
    assert digest_kinds(tmp_path) == ["start", "interval", "interval"]
    active.close()


def test_a_digest_that_cannot_be_written_is_retried(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = digests.append
    failures = [OSError(28, "No space left on device")]

    def full_once(*args: Any) -> Path:
        if failures:
            raise failures.pop()
        return real(*args)

    with open_store(tmp_path, digest_interval=0.1) as store:
        monkeypatch.setattr(digests, "append", full_once)
        store.write(events(2))
        wait_until(lambda: "interval" in digest_kinds(tmp_path)
                   and store.stats()["integrity"]["pending_digests"] == 0)
        assert "No space left" in store.stats()["integrity"]["last_error"]
        assert not failures  # it did fail once


def test_a_signing_key_that_cannot_be_used_stops_the_store_from_opening(tmp_path: Path) -> None:
    key_path = tmp_path / "not-a-key.pem"
    key_path.write_text("-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"), \
            open_store(tmp_path / "data", signing_key=key_path):
        pass
    with pytest.raises(KeyFileError, match="does not exist"), \
            open_store(tmp_path / "data", signing_key=tmp_path / "no-such-dir" / "key.pem"):
        pass


@pytest.mark.parametrize(("odd", "is_what"), [
    # its open waited for a writer: serve's start (and `keys rotate`) hung for good,
    # deaf to SIGTERM
    ("FIFO", "a FIFO, not a regular file"),
    # said to check the signing_key option and the file's owner: no owner makes it a key
    ("huge", "larger than 1,048,576 bytes, more than such a file ever holds"),
])
def test_a_signing_key_that_is_no_key_file_stops_the_store_from_opening_at_once(
        tmp_path: Path, odd: str, is_what: str) -> None:
    import os

    key_path = tmp_path / "key.pem"
    if odd == "FIFO":
        os.mkfifo(key_path)
    else:
        key_path.write_bytes(b"-" * (2 << 20))

    def open_it() -> None:
        with open_store(tmp_path / "data", signing_key=key_path):
            pass

    outcome = outcome_within(30, open_it)
    assert isinstance(outcome, KeyFileError), outcome
    assert f"the signing key {key_path} is {is_what}: point signing_key at" \
        in str(outcome)
    assert "owner" not in str(outcome)


def test_a_missing_signing_key_for_a_signed_store_stops_it_not_a_new_key(
        tmp_path: Path) -> None:
    """A typo in --signing-key made a new key that signed on without a word, and verify
    then called every later digest untrusted. A store with digests needs the key that
    signed them, or a new one made on purpose (verify shows the change)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.integrity.helpers import build_store, check

    data = build_store(tmp_path / "data", batches=1)
    typo = tmp_path / "typo-key.pem"
    with pytest.raises(KeyFileError, match="does not exist, but this store's digests"), \
            open_store(data, signing_key=typo):
        pass
    assert not typo.exists() and check(data).valid
    typo.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    typo.chmod(0o600)
    with open_store(data, signing_key=typo):  # made on purpose: the store opens
        pass
