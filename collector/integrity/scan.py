"""Re-hashing one segment file for ``verify``: its SHA-256 (and the SHA-256 of the
prefixes its checkpoints describe) and the chain link of every record.

One pass reads the (uncompressed) bytes in large chunks. A worker thread hashes them
(hashlib releases the GIL on large buffers, so this runs on the second core) while this
thread checks each record's link to the line before it. Only when a link is broken does
a second pass parse every record and name what happened (``classify``): links are then
checked against the record with the previous *seq*, wherever it is, so a removed,
duplicated or moved record is told apart from a changed one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from collector.storage.compression import gzip_chunks
from collector.storage.errors import CorruptSegmentError
from collector.storage.lines import LineSplitter
from collector.storage.regular_files import open_regular
from collector.storage.segments import SegmentFile, SegmentHeader

from . import chain as chains
from .findings import (
    MAX_LISTED,
    RECORD_DUPLICATED,
    RECORD_MISSING,
    RECORD_MODIFIED,
    RECORDS_REORDERED,
    Finding,
)

CHUNK: Final = 4 << 20
_IN_FLIGHT: Final = 3  # chunks queued for the hashing thread (bounds memory)
#: A line longer than this is no record (an event line is at most 256 KiB): its bytes are
#: counted, not kept, so a huge unterminated tail costs neither memory nor time.
MAX_LINE: Final = 16 << 20


@dataclass
class Scan:
    """What one segment file holds, as far as a digest can tell."""

    header: SegmentHeader | None = None
    size: int = 0  # bytes of complete lines (uncompressed)
    records: int = 0
    torn: int = 0  # bytes after the last newline
    sha256_at: dict[int, str] = field(default_factory=dict)  # prefix length -> hex
    chain_at: dict[int, str] = field(default_factory=dict)  # record count -> its chain
    line_at: dict[int, bytes] = field(default_factory=dict)  # record count -> that line
    broken: int = 0  # records whose link to the line before is broken
    findings: list[Finding] = field(default_factory=list)

    @property
    def last_chain(self) -> str:
        return self.chain_at.get(self.records, "")

    @property
    def sha256(self) -> str:
        return self.sha256_at.get(self.size, "")


class _Hasher:
    """SHA-256 of a byte stream fed in order, with the digest of given prefixes."""

    def __init__(self, marks: set[int]) -> None:
        self.running = hashlib.sha256()
        self.offset = 0
        self.marks = sorted(marks)
        self.at: dict[int, str] = {}
        if 0 in marks:
            self.at[0] = self.running.hexdigest()

    def feed(self, data: bytes) -> None:
        end = self.offset + len(data)
        view = memoryview(data)
        for mark in self.marks:
            if self.offset < mark <= end:
                self.running.update(view[:mark - self.offset])
                view = view[mark - self.offset:]
                self.offset = mark
                self.at[mark] = self.running.hexdigest()
        self.running.update(view)
        self.offset = end

    def finish(self) -> dict[int, str]:
        self.at[self.offset] = self.running.hexdigest()
        return self.at


def chunks(file: SegmentFile) -> Iterator[tuple[bytes, int]]:
    """The uncompressed bytes of a plain or compressed segment, in large chunks, each
    with how many bytes of the file itself have been read so far."""
    try:
        with open_regular(file.path) as raw:
            if file.compressed:
                yield from gzip_chunks(raw, file.path.name, CHUNK)
            else:
                while chunk := raw.read(CHUNK):
                    yield chunk, raw.tell()
    except OSError as exc:  # a damaged member is gzip_chunks' CorruptSegmentError
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptSegmentError(f"{file.path.name}: cannot be read to the end ({exc})") \
            from None


def scan(file: SegmentFile, *, marks: set[int], counts: set[int],
         progress: Callable[[int], None] | None = None,
         hasher_pool: ThreadPoolExecutor | None = None) -> Scan:
    """Hash ``file`` (also its first ``marks`` bytes) and check every record's link to
    the line before; keep the chain value and line of the records at ``counts``.
    ``progress`` gets the bytes of ``file`` read so far (compressed bytes for .gz)."""
    result = Scan()
    hasher = _Hasher(marks)
    pool = hasher_pool or ThreadPoolExecutor(1, thread_name_prefix="verify-hash")
    queued: list[Future[None]] = []
    split = LineSplitter(MAX_LINE)
    previous = b""
    last = b""
    count = 0
    wanted = set(counts)
    sha = hashlib.sha256
    field_name, suffix = chains.FIELD, chains.SUFFIX_LEN
    try:
        for chunk, done in chunks(file):
            if progress is not None:
                progress(done)
            queued.append(pool.submit(hasher.feed, chunk))
            if len(queued) > _IN_FLIGHT:
                queued.pop(0).result()
            lines = split.feed(chunk)
            if not lines:
                continue
            if result.header is None:
                result.header = SegmentHeader.parse(lines[0] + b"\n", file.path.name)
                previous = result.header.chain.encode()
                if 0 in wanted:
                    result.chain_at[0] = result.header.chain
                del lines[0]
            broken = 0
            for line in lines:  # the hot loop: one SHA-256 per record
                count += 1
                if line[-suffix:-suffix + 10] == field_name and line[-2:] == b'"}':
                    stored = line[-66:-2]
                    if sha(previous + line[:-suffix]).hexdigest().encode() != stored:
                        broken += 1
                    previous = stored
                else:
                    broken += 1
                if count in wanted:
                    result.chain_at[count] = previous.decode("ascii", "replace")
                    result.line_at[count] = line
            result.broken += broken
            if lines:
                last = lines[-1]
        for future in queued:
            future.result()
    finally:
        if hasher_pool is None:
            pool.shutdown(wait=True)
    if result.header is None:
        raise CorruptSegmentError(f"{file.path.name} has no complete header line")
    result.records = count
    result.chain_at[count] = previous.decode("ascii", "replace")
    if count:
        result.line_at[count] = last
    result.torn = split.pending_bytes
    hashed = hasher.finish()
    total = hasher.offset
    result.size = total - split.pending_bytes
    # The prefix hashes the digests ask for, and the hash of the complete lines.
    result.sha256_at = {m: h for m, h in hashed.items() if m <= result.size}
    if result.size not in result.sha256_at:
        result.sha256_at[result.size] = _prefix_sha256(file, result.size)
    return result


def _prefix_sha256(file: SegmentFile, size: int) -> str:
    """The hash of the first ``size`` bytes (a torn tail is left out of it)."""
    running = hashlib.sha256()
    left = size
    for chunk, _ in chunks(file):
        running.update(chunk[:left])
        left -= min(left, len(chunk))
        if not left:
            break
    return running.hexdigest()


# -- naming what happened ---------------------------------------------------------------
@dataclass
class _Record:
    line: int  # 1-based line number in the file (the header is line 1)
    seq: int | None
    unchained: bytes
    chain: bytes


def classify(file: SegmentFile, header: SegmentHeader, first_seq: int | None,
             last_seq: int | None) -> list[Finding]:
    """What was done to the records of ``file`` whose links are broken: changed,
    removed, duplicated or moved. ``first_seq``/``last_seq``: the seqs the segment
    should start and end with, when a digest or the previous segment says so."""
    records, unreadable, more_unreadable = _parse_records(file)
    findings = [Finding(RECORD_MODIFIED, f"line {n} is not a chained record: {why}")
                for n, why in unreadable]
    if more_unreadable:
        findings.append(Finding(RECORD_MODIFIED, f"{more_unreadable:,} more line(s) are not "
                                f"chained records", more_unreadable))
    present = [r for r in records if r.seq is not None]
    by_seq: dict[int, list[_Record]] = {}
    for r in present:
        by_seq.setdefault(r.seq, []).append(r)  # type: ignore[arg-type]
    if not by_seq:
        return findings
    first = first_seq if first_seq is not None else min(by_seq)
    # Without a signed end (the active segment), the end is the last record that links to
    # the one before it: one forged seq of 9e18 appended must not stand for the end, and
    # make 9e18 records "missing" (verify counted them one by one, for good).
    last = last_seq if last_seq is not None else _last_linked(records, header) or max(by_seq)
    # A seq outside the segment's range is a record from elsewhere: before it, a copy
    # of an older record; after its signed end, one moved here from a later segment.
    for r in present:
        assert r.seq is not None
        if r.seq < first:
            findings.append(Finding(RECORD_DUPLICATED, f"record seq {r.seq} (line {r.line}) "
                                    f"belongs before this segment (seq {first}-{last}): a "
                                    f"copy of an older record"))
        elif r.seq > last:
            findings.append(Finding(RECORDS_REORDERED, f"record seq {r.seq} (line {r.line}) "
                                    f"belongs after this segment's signed end (seq {last})"))
    present = [r for r in present if first <= r.seq <= last]  # type: ignore[operator]
    by_seq = {seq: rs for seq, rs in by_seq.items() if first <= seq <= last}
    header_chain = header.chain.encode()
    for r in present:
        seq = r.seq
        assert seq is not None
        if seq == first:
            before = [header_chain]
        else:
            before = [p.chain for p in by_seq.get(seq - 1, [])]
        if before and not any(chains.link(p, r.unchained) == r.chain for p in before):
            findings.append(Finding(RECORD_MODIFIED, f"record seq {seq} (line {r.line}) does "
                                    f"not match its chain hash: its bytes were changed"))
    missing = _missing_runs(first, last, sorted(by_seq))
    if missing:
        findings.append(Finding(RECORD_MISSING, f"{sum(b - a + 1 for a, b in missing):,} "
                                f"record(s) missing: seq {describe_runs(missing)}"))
    for seq, copies in by_seq.items():
        if len(copies) > 1:
            lines = ", ".join(str(c.line) for c in copies)
            findings.append(Finding(RECORD_DUPLICATED, f"record seq {seq} appears "
                                    f"{len(copies)} times (lines {lines})"))
    highest = None
    seen: set[int] = set()
    for r in present:
        seq = r.seq
        assert seq is not None
        if seq in seen:
            continue  # a duplicate, reported above
        seen.add(seq)
        if highest is not None and seq < highest:
            findings.append(Finding(RECORDS_REORDERED, f"record seq {seq} (line {r.line}) "
                                    f"comes after seq {highest}"))
        highest = seq if highest is None else max(highest, seq)
    order = (RECORD_MODIFIED, RECORD_MISSING, RECORD_DUPLICATED, RECORDS_REORDERED)
    return sorted(findings, key=lambda f: order.index(f.reason))


def _parse_records(file: SegmentFile) -> tuple[list[_Record], list[tuple[int, str]], int]:
    """The records of ``file`` with a seq; the first lines that are none (line number,
    why), at most ``MAX_LISTED``; how many more there are."""
    records: list[_Record] = []
    unreadable: list[tuple[int, str]] = []
    more = 0
    split = LineSplitter(MAX_LINE)
    number = 0
    for chunk, _ in chunks(file):
        for line in split.feed(chunk):
            number += 1
            if number == 1:
                continue  # the header
            parts = chains.split(line)
            seq = _seq(line) if parts is not None else None
            if parts is None or seq is None:
                if len(unreadable) < MAX_LISTED:
                    unreadable.append((number, "it has no chain field" if parts is None
                                       else "it is not a JSON record with a seq"))
                else:
                    more += 1
                continue
            records.append(_Record(number, seq, parts[0], parts[1]))
    return records, unreadable, more


def _seq(line: bytes) -> int | None:
    try:
        value: Any = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    seq = value.get("seq") if isinstance(value, dict) else None
    return seq if type(seq) is int else None


def _last_linked(records: list[_Record], header: SegmentHeader) -> int | None:
    """The seq of the last record, in file order, whose chain value links it to the line
    before it (the header for the first)."""
    previous = header.chain.encode()
    last = None
    for r in records:
        if chains.link(previous, r.unchained) == r.chain:
            last = r.seq
        previous = r.chain
    return last


def _missing_runs(first: int, last: int, present: list[int]) -> list[tuple[int, int]]:
    """The runs of numbers in ``first..last`` not in ``present`` (sorted): computed from
    the gaps, never number by number."""
    runs = []
    expected = first
    for seq in present:
        if seq > expected:
            runs.append((expected, seq - 1))
        expected = max(expected, seq + 1)
    if expected <= last:
        runs.append((expected, last))
    return runs


def ranges(numbers: list[int]) -> str:
    """``3, 7-9`` (at most 5 runs shown)."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return describe_runs(runs)


def describe_runs(runs: list[tuple[int, int]]) -> str:
    """``3, 7-9`` of runs (first, last), at most 5 shown."""
    shown = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:5]]
    return ", ".join(shown) + (f" and {len(runs) - 5} more runs" if len(runs) > 5 else "")
