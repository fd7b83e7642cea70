"""Signed digests: what they say, how a line is signed, the files that hold them.

A digest is one JSON line describing one segment at one moment: its name, header id and
chain link, how many bytes and records it had, the SHA-256 of those (uncompressed)
bytes, its first and last record (seq, event id, time), and the chain value of its last
record. Digests are numbered (``n``) across the whole store and each carries the
signature of the one before (``previous``), so they form a chain of their own. Kinds:

- ``checkpoint``: the active segment (``why``: ``start``, ``interval``, ``stop``);
- ``seal``: a segment's final state, written when it is sealed (``head`` names the new
  active segment, so removing the newest segment is noticed);
- ``retention``: a checkpoint of the active segment saying segments below
  ``deleted_below`` are deleted by retention (written before they are);
- ``key_rotation``: a checkpoint signed by the old key naming the new one (``new_key``).

The signature (Ed25519, base64) is the line's last field; it signs the line's bytes up
to ``,"signature":``, so verifying never re-serializes JSON. A segment's digests are in
``digests/<segment name without .jsonl>.digests.jsonl``, appended and fsynced.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from collector.storage.regular_files import fsync_dir, read_regular
from collector.storage.segments import FILE_MODE

from .errors import DigestFormatError
from .keys import SigningKey

DIGESTS_DIR: Final = "digests"
FORMAT: Final = 1
KINDS: Final = ("checkpoint", "seal", "retention", "key_rotation")
_SUFFIX: Final = ".digests.jsonl"
_SIGNATURE: Final = b',"signature":"'
# ASCII digits only: a Unicode digit (which ``\d`` takes by default) made a second file
# with the same number, and int() read it as that number.
_FILE_NAME = re.compile(r"(segment-(\d{8,})-\d{8}T\d{6}Z)\.digests\.jsonl", re.ASCII)

#: Optional: the collector's clock when it signed a digest dated after it (its clock had
#: stepped back behind the digest before: a digest is dated no earlier than that one).
CLOCK: Final = "clock"
_INT_FIELDS: Final = ("n", "segment_seq", "bytes", "records", "first_seq", "last_seq",
                      "interval_ms")
_STR_FIELDS: Final = ("kind", "time", "key", "previous", "segment", "segment_id",
                      "header_chain", "sha256", "first_id", "last_id", "first_time",
                      "last_time", "last_chain", "head")


@dataclass
class SegmentState:
    """A segment as a digest describes it (the ledger keeps one for the active segment;
    ``verify`` computes one from the file)."""

    name: str
    id: str
    seq: int
    header_chain: str
    size: int = 0
    records: int = 0
    sha256: str = ""
    first_seq: int = 0
    last_seq: int = 0
    first_id: str = ""
    last_id: str = ""
    first_time: str = ""
    last_time: str = ""
    last_chain: str = ""

    def fields(self) -> dict[str, Any]:
        return {"segment": self.name, "segment_id": self.id, "segment_seq": self.seq,
                "header_chain": self.header_chain, "bytes": self.size,
                "records": self.records, "sha256": self.sha256,
                "first_seq": self.first_seq, "last_seq": self.last_seq,
                "first_id": self.first_id, "last_id": self.last_id,
                "first_time": self.first_time, "last_time": self.last_time,
                "last_chain": self.last_chain}


@dataclass(frozen=True)
class Digest:
    body: dict[str, Any]
    message: bytes  # the signed bytes
    signature: bytes
    signature_b64: str
    file: str = ""
    line: int = 0

    def __getattr__(self, name: str) -> Any:
        try:
            return self.body[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def where(self) -> str:
        return f"digest #{self.body['n']} ({self.file} line {self.line})"

    @property
    def signed_at(self) -> str:
        """When the collector's clock said it signed this digest (``time`` unless it is
        dated after its clock: ``CLOCK``)."""
        return str(self.body.get(CLOCK, self.body["time"]))


def file_name(segment_name: str) -> str:
    return segment_name.removesuffix(".jsonl") + _SUFFIX


def segment_of_file(name: str) -> tuple[str, int] | None:
    """(segment name, segment seq) a digest file is named after, or None."""
    match = _FILE_NAME.fullmatch(name)
    return (match[1] + ".jsonl", int(match[2])) if match else None


def list_digest_files(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        named = segment_of_file(path.name)
        if named is not None:
            found.append((named[1], path))
    return sorted(found)


# -- one line ---------------------------------------------------------------------------
def sign(body: dict[str, Any], key: SigningKey) -> bytes:
    """The signed line of ``body`` (which names ``key`` as its signer)."""
    message = orjson.dumps(body)[:-1]
    signature = base64.b64encode(key.sign(message))
    return message + _SIGNATURE + signature + b'"}\n'


def parse(line: bytes, file: str = "", number: int = 0) -> Digest:
    """A digest line's fields and signed bytes. Raises ``DigestFormatError``."""
    where = f"{file} line {number}" if file else "digest line"
    at = line.rfind(_SIGNATURE)
    end = len(line) - 1 if line.endswith(b"\n") else len(line)
    if at < 0 or line[end - 2:end] != b'"}':
        raise DigestFormatError(f"{where}: no signature at the end of the line")
    message = line[:at]
    signature_b64 = line[at + len(_SIGNATURE):end - 2]
    try:
        signature = base64.b64decode(signature_b64, validate=True)
        body = orjson.loads(message + b"}")
    except (binascii.Error, ValueError):
        raise DigestFormatError(f"{where}: not a JSON digest with a base64 signature") \
            from None
    if base64.b64encode(signature) != signature_b64:
        # Base64 has spare bits (the last character of "...Bg==" and "...Bh==" decode
        # alike): a signature rewritten that way verified, and the next digest, chained
        # to the rewritten text, made every anchor of the original read "re-signed".
        raise DigestFormatError(f"{where}: the signature is not in canonical base64")
    if not isinstance(body, dict) or body.get("digest") != FORMAT:
        raise DigestFormatError(f"{where}: not a format-{FORMAT} digest")
    for name in _INT_FIELDS:
        if type(body.get(name)) is not int:
            raise DigestFormatError(f"{where}: field {name!r} missing or not an integer")
    for name in _STR_FIELDS:
        if type(body.get(name)) is not str:
            raise DigestFormatError(f"{where}: field {name!r} missing or not a string")
    if body["kind"] not in KINDS:
        raise DigestFormatError(f"{where}: unknown kind {body['kind']!r}")
    return Digest(body, message, signature, signature_b64.decode("ascii"), file, number)


# -- files ------------------------------------------------------------------------------
@dataclass
class DigestFile:
    path: Path
    digests: list[Digest]
    problems: list[str]  # lines that are not digests
    torn: bool  # the last line has no newline (cut by a crash, or by hand)


# A digest line is under 1 KiB and a segment gets one every digest_interval while it is
# active: no digest file of a real store comes near this (a regular file only: a FIFO
# or a link to /dev/zero hung verify and start-up).
MAX_FILE_BYTES: Final = 256 * 1024 * 1024


def read_file(path: Path) -> DigestFile:
    return parse_file(path, read_regular(path, MAX_FILE_BYTES))


def parse_file(path: Path, data: bytes) -> DigestFile:
    """The digests in ``data``, the bytes of the digest file ``path``."""
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    if not torn:
        lines.pop()
    digests, problems = [], []
    for number, line in enumerate(lines, 1):
        if torn and number == len(lines):
            problems.append(f"line {number} is cut short (no newline)")
            continue
        try:
            digests.append(parse(line, path.name, number))
        except DigestFormatError as exc:
            problems.append(str(exc))
    return DigestFile(path, digests, problems, torn)


def append(directory: Path, segment_name: str, line: bytes) -> Path:
    """Append one signed line to the segment's digest file and fsync it (and the
    directory, when the file is new)."""
    path = directory / file_name(segment_name)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        fd, new = os.open(path, flags | os.O_EXCL, FILE_MODE), True
    except FileExistsError:
        fd, new = os.open(path, flags, FILE_MODE), False
    try:
        size = os.fstat(fd).st_size
        try:
            done = 0
            while done < len(line):
                done += os.write(fd, line[done:])
            os.fsync(fd)
        except OSError:
            # A full disk takes part of the line, then refuses the rest: cut the part
            # off (shrinking needs no space), or the retry appends the whole line after
            # it and the file holds a line that is no digest, a tamper alarm for good.
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass  # left for start-up, which moves a torn last line to quarantine/
            if new:
                # Created for this line: left empty, verify reads "its digests were
                # removed" (INVALID) if the collector stops before the retry (a full
                # disk at the stop). Unlinking needs no space either.
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
    finally:
        os.close(fd)
    if new:
        fsync_dir(directory)
    return path
