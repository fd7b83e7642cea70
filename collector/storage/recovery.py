"""Start-up repair and index catch-up: make the index agree with the segments.

What a crash can leave, and what happens to it:
- a temporary file of an interrupted segment creation or compression: removed;
- a plain and a compressed copy of one sealed segment: the copy the index does not
  point at is removed (the compressed one is complete, it was fsynced before rename);
- a torn last line in the active segment: moved to ``quarantine/`` and counted;
- records fsynced to a segment but not yet in the index: indexed;
- an index that disagrees with itself or is unreadable: rebuilt from the segments.
``reindex`` is the last case on request.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from collector.index import CATCHING_UP, CHUNK_ROWS, INDEX_SCHEMA, Index, SegmentEntry

from . import sources
from .compression import BlockMap, iter_lines_and_blocks
from .errors import CorruptSegmentError, StorageError
from .records import Row, created_micros, id_key, ip_column
from .regular_files import fsync_dir, open_regular
from .segment_drop import NO_TIME
from .segments import (
    SegmentFile,
    SegmentHeader,
    TornTail,
    iter_lines,
    leftover_temp_files,
    list_segment_files,
    repair_tail,
)

Progress = Callable[[int, int], None]

log = logging.getLogger("collector.store")
_BATCH = 20_000


@dataclass
class RepairReport:
    """What ``Store.open()`` (or ``reindex``) found and fixed."""

    quarantined: list[TornTail] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)
    index_rebuilt: str | None = None  # why the index was rebuilt from scratch
    indexed: int = 0  # records added to the index
    dropped_segments: list[str] = field(default_factory=list)  # in the index, not on disk
    #: Of those, the ones retention deleted, their index rows still being dropped at the
    #: stop (the indexer drops them in the background): expected, not a repair.
    retention_drops: list[str] = field(default_factory=list)
    unreadable_lines: int = 0  # lines inside a segment that are not records: skipped
    #: The highest segment and record numbers the index named before any repair: a new
    #: segment or record is numbered after them (and after what the digests name), so
    #: no number ever means two things (``Store.open``).
    named_segment: int = 0
    named_record: int = 0
    #: Numbers of segments newer than every segment file left, which the index or the
    #: digests name (the active segment deleted): the new one is numbered after them.
    missing_newest: list[int] = field(default_factory=list)

    @property
    def quarantined_bytes(self) -> int:
        return sum(t.size for t in self.quarantined)

    def describe(self) -> str:
        """What was found and fixed, in one line for an operator."""
        done = []
        if self.quarantined:
            done.append(f"{len(self.quarantined)} torn tail(s), {self.quarantined_bytes} "
                        "bytes, moved to quarantine/")
        if self.index_rebuilt:
            done.append(f"index rebuilt ({self.index_rebuilt})")
        if self.indexed:
            done.append(f"{self.indexed} records indexed")
        if self.removed_files:
            done.append(f"{len(self.removed_files)} leftover temp file(s) removed")
        missing = len(self.dropped_segments) - len(self.retention_drops)
        if missing:
            done.append(f"{missing} missing segment(s) dropped from the index")
        if self.retention_drops:
            done.append(f"the index rows of {len(self.retention_drops)} segment(s) "
                        "retention deleted before the stop dropped")
        if self.missing_newest:
            done.append(f"newest segment(s) {', '.join(map(str, self.missing_newest))} "
                        "missing (deleted?): new records go to a segment numbered after them")
        if self.unreadable_lines:
            done.append(f"{self.unreadable_lines} unreadable line(s) skipped")
        return "; ".join(done) if done else "nothing to repair"


def open_and_recover(path: Path, segments_dir: Path, quarantine_dir: Path, *,
                     make_index: Callable[[Path], Index], rebuild: str | None = None,
                     progress: Progress | None = None) -> tuple[Index, RepairReport]:
    """Open the index at ``path`` and ``recover``. The index is derived data: one SQLite
    cannot open, or whose pages or schema fail where recovery reads or repairs them, is
    removed and built afresh from the segments rather than patched on top of what could
    not be read (what only it held, each source's ``numbered`` and ``last_seen``, is lost
    with it)."""

    def afresh() -> Index:
        reset_index_files(path)
        return make_index(path)

    try:
        index = make_index(path)
    except sqlite3.DatabaseError as exc:
        if not is_damage(exc):
            raise
        index, rebuild = afresh(), f"index unreadable ({exc})"
    try:
        return index, recover(segments_dir, quarantine_dir, index, rebuild=rebuild,
                              progress=progress)
    except sqlite3.DatabaseError as exc:
        index.close()
        if not is_damage(exc):
            raise
        log.error("audit store: the index is damaged (%s); rebuilding it from the segments",
                  exc)
        index = afresh()
        return index, recover(segments_dir, quarantine_dir, index,
                              rebuild=f"index damaged ({exc})", progress=progress)


#: SQLite result codes that mean the file itself is damaged (its pages, or a schema that
#: no longer matches what the collector wrote). Any other error (busy, locked, full,
#: I/O, read-only, out of memory) says nothing about the file and is raised as it is:
#: rebuilding would cost a full reindex and lose what only the index holds.
_DAMAGE: Final = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_ERROR", "SQLITE_MISMATCH")


def is_damage(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` says the index file is damaged (see ``_DAMAGE``)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return any(name == code or name.startswith(code + "_") for code in _DAMAGE)


def recover(segments_dir: Path, quarantine_dir: Path, index: Index, *,
            rebuild: str | None = None, progress: Progress | None = None) -> RepairReport:
    """Repair what a crash left and bring the index up to date with the segments.
    ``rebuild``: a reason to drop the index and rebuild it from scratch."""
    report = RepairReport()
    if index.created:
        # Made just now, empty: its making is the first change. A start refused before
        # any other (a FIFO in place of the active segment) left an index of no events
        # that readers answered from as if whole, every record still in the segments.
        _mark(index)
    for tmp in leftover_temp_files(segments_dir):
        tmp.unlink()
        report.removed_files.append(tmp.name)
    if rebuild is None:
        rebuild = _index_problem(index)
    # The highest numbers the index names, read before any rebuild wipes them: a new
    # segment or record is never numbered at or below them, even when the newest
    # segment file is gone (an older schema's catalog has the same columns).
    named = index.segments()  # a DatabaseError here: the caller starts the index afresh
    report.named_segment = max(named, default=0)
    report.named_record = max((e.last_seq for e in named.values()), default=0)
    if rebuild is not None:
        _mark(index)
        with index.transaction():
            index.wipe()
        report.index_rebuilt = rebuild
    catalog: dict[int, SegmentEntry] = {} if rebuild is not None else named  # wiped: empty
    files = _one_copy_each(segments_dir, catalog, report)
    if files and not files[-1].compressed:
        torn = repair_tail(files[-1].path, quarantine_dir)
        if torn is not None:
            report.quarantined.append(torn)
    _mark(index)
    todo = _reconcile(index, catalog, files, report)
    # Said in the index while it lacks records: readers then refuse it, rather than give
    # a partial answer as if whole (a reindex stopped half way did, without a word).
    index.set_meta(CATCHING_UP, f"{len(todo)} segment file(s) to index")
    _catch_up(index, todo, files[-1].seq if files else None, report, progress)
    index.set_meta(CATCHING_UP, None)
    return report


def _mark(index: Index) -> None:
    """Mark the index catching up, just before recovery first changes it (its making,
    a rebuild's wipe, a segment's rows dropped, records added): a kill from there on leaves an index
    readers refuse, never one that looks complete (see CATCHING_UP). Not before: a
    start-up that fails first (a FIFO in place of the active segment, refused by
    ``repair_tail``) left the mark on an index it never touched, and readers refused
    an index as whole as before it, saying a repair was in progress."""
    index.set_meta(CATCHING_UP, "repair or rebuild in progress")


Todo = list[tuple[SegmentFile, SegmentEntry | None]]


def _reconcile(index: Index, catalog: dict[int, SegmentEntry], files: list[SegmentFile],
               report: RepairReport) -> Todo:
    """Drop what the index says about segments that are gone or changed; return the
    files with records the index lacks, and what it knows of each."""
    on_disk = {f.seq: f for f in files}
    for seq, known in catalog.items():
        if seq not in on_disk:
            if _hidden(index, seq):
                report.retention_drops.append(known.name)
            _drop(index, seq)
            report.dropped_segments.append(known.name)
    todo: Todo = []
    for f in files:
        entry = catalog.get(f.seq)
        size = f.path.stat().st_size
        if entry is not None and (entry.name != f.name or entry.compressed != f.compressed
                                  or (not f.compressed and entry.end_offset > size)):
            _drop(index, f.seq)  # not the file the index describes: index it afresh
            entry = None
        if entry is None or (not f.compressed and entry.end_offset < size):
            todo.append((f, entry))
    return todo


def _catch_up(index: Index, todo: Todo, active: int | None, report: RepairReport,
              progress: Progress | None) -> None:
    sizes = [f.path.stat().st_size - (e.end_offset if e else 0) for f, e in todo]
    total, done = sum(sizes), 0
    ranges = index.source_ranges()
    for (f, entry), size in zip(todo, sizes):
        report.indexed += _index_file(index, f, entry, ranges, report,
                                      _within(progress, done, size, total))
        if f.seq != active and index.open_chunk is not None:
            index.close_chunk()  # a sealed segment's chunk is complete
        index.checkpoint()
        done += size
        if progress is not None:
            progress(done, total)
    if progress is not None and not todo:
        progress(0, 0)


def _within(progress: Progress | None, start: int, size: int,
            total: int) -> Callable[[int], None] | None:
    """Progress inside one file, reported as progress of the whole job."""
    if progress is None:
        return None
    report = progress

    def inside(done: int) -> None:
        report(start + min(done, size), total)

    return inside


def _index_problem(index: Index) -> str | None:
    if index.meta("schema") != INDEX_SCHEMA:
        return f"index schema {index.meta('schema')} is not {INDEX_SCHEMA}"
    if not index.rows_match_catalog():
        return "index rows do not match its catalog (rows or postings missing or added)"
    return None


def _hidden(index: Index, seq: int) -> bool:
    """Whether every chunk of segment ``seq`` is hidden from queries, as the commit
    thread hides those of the segments retention deletes (``hide_segments``) until their
    rows are dropped; a drop under way may have left none."""
    shown = index.con.execute("SELECT count(*) FROM chunks WHERE segment=? AND min_created<>?",
                              (seq, NO_TIME[0])).fetchone()[0]
    return int(shown) == 0


def _drop(index: Index, seq: int) -> None:
    with index.transaction():
        index.drop_segment(seq)


def _one_copy_each(segments_dir: Path, catalog: dict[int, SegmentEntry],
                   report: RepairReport) -> list[SegmentFile]:
    by_seq: dict[int, list[SegmentFile]] = {}
    for f in list_segment_files(segments_dir):
        by_seq.setdefault(f.seq, []).append(f)
    files = []
    for seq in sorted(by_seq):
        copies = by_seq[seq]
        if len(copies) == 2:
            entry = catalog.get(seq)
            keep_compressed = entry is not None and entry.compressed
            loser = copies[0] if keep_compressed else copies[1]
            loser.path.unlink()
            fsync_dir(segments_dir)
            report.removed_files.append(loser.path.name)
            copies.remove(loser)
        files.append(copies[0])
    return files


def _index_file(index: Index, f: SegmentFile, entry: SegmentEntry | None,
                ranges: dict[str, sources.Ranges], report: RepairReport,
                progress: Callable[[int], None] | None) -> int:
    """Index the records of ``f`` past what ``entry`` says is indexed; returns how many."""
    blocks: BlockMap = []
    start = entry.end_offset if entry is not None else 0
    count = 0
    with open_regular(f.path) as stream:
        if f.compressed:
            lines = iter_lines_and_blocks(f.path, blocks)
        else:
            stream.seek(start)
            lines = iter_lines(stream, start)
        batch: list[Row] = []
        numbered: dict[str, list[int]] = {}
        last_seq = entry.last_seq if entry is not None else index.max_seq_before(f.seq)
        end = start
        for offset, line in lines:
            if offset < start:
                continue
            if offset == 0:
                header = SegmentHeader.parse(line, f.path.name)
                if header.seq != f.seq:
                    raise CorruptSegmentError(
                        f"{f.path.name}: header says segment {header.seq}; rename the "
                        f"file or move it out of the segments directory"
                    )
                with index.transaction():
                    index.add_segment(f.name, header, len(line))
                end = len(line)
                continue
            row = _row(line, offset, last_seq)
            end = offset + len(line)
            if row is None:
                report.unreadable_lines += 1
                continue
            last_seq = row[0][0]
            batch.append(row[0])
            if row[1]:
                numbered.setdefault(row[1], []).append(row[2])
            if len(batch) >= _BATCH:
                count += _flush(index, f.seq, batch, end, numbered, ranges)
                if progress is not None:
                    progress(end - start)  # bytes of this file done (compressed: approx.)
        count += _flush(index, f.seq, batch, end, numbered, ranges)
        if not f.compressed and end < os.fstat(stream.fileno()).st_size:
            # Bytes after the last complete line of a sealed segment (the active one's
            # torn tail was cut before): no crash leaves them, so they are reported at
            # every start, and left for `verify` and the operator to judge.
            report.unreadable_lines += 1
    if f.compressed:
        with index.transaction():
            index.mark_compressed(f.seq, blocks)
    return count


def _row(line: bytes, offset: int, after_seq: int) -> tuple[Row, str, int] | None:
    """The index row of one record line, its source and source_seq; None if the line
    is not a record that can follow seq ``after_seq``."""
    try:
        r: dict[str, Any] = orjson.loads(line)
        seq = r["seq"]
        if type(seq) is not int or seq <= after_seq:
            return None
        row: Row = (seq, id_key(r["id"]), created_micros(r["created"]), r["type"], r["principal"],
                    r["target"], r["org_id"], r["workspace_id"], ip_column(r["client_ip"]),
                    r["status"], r["org_name"], r["workspace_name"], offset, len(line))
        source = r.get("source") or ""
        number = r.get("source_seq") or 0
    except (orjson.JSONDecodeError, KeyError, TypeError, StorageError):
        return None
    if type(source) is not str or type(number) is not int:
        return row, "", 0
    return row, source, number


def _flush(index: Index, segment: int, batch: list[Row], end: int,
           numbered: dict[str, list[int]], ranges: dict[str, sources.Ranges]) -> int:
    n = len(batch)
    with index.transaction():
        index.add_rows(segment, batch, end)
        if not batch:  # only unreadable lines: still record how far the segment is read
            index.con.execute("UPDATE segments SET end_offset=? WHERE seq=?", (end, segment))
        changed = {s: sources.add(ranges.get(s, []), nums) for s, nums in numbered.items()}
        index.set_source_ranges(changed)
    ranges.update(changed)
    batch.clear()
    numbered.clear()
    if index.open_chunk is not None and index.open_chunk.rows >= CHUNK_ROWS:
        index.close_chunk()
        index.checkpoint()
    return n


def reset_index_files(path: Path) -> None:
    """Remove an index SQLite cannot open (with its WAL), so a fresh one is built."""
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass
