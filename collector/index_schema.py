"""The index's layout: its SQLite schema, its schema number and the sizes it is cut by.
The writer's view is ``collector.index.Index``; connections: ``collector.index_connections``.

Layout, chosen for the ingest rate:

- ``events`` holds one row per event (seq, id, created as integer microseconds, the
  filter columns, offset and length of the line in the uncompressed segment). Its seqs
  are cut into *chunks*: a chunk belongs to one segment and holds at most
  ``CHUNK_ROWS`` rows. Rows are appended to the open chunk without postings;
  a closed chunk's postings (``ix_<column>``: chunk, value, seq) are built in bulk in
  the background (``collector.storage.chunks``). A query scans only the chunks not
  indexed yet: the open one, and during a burst the few closed ones the indexer has not
  reached (``MAX_UNINDEXED`` bounds them). The schema never changes after creation,
  however many chunks a store holds (see ``collector.storage.chunks`` for why).
- ``names``: the (kind, name, id) triples of organizations and workspaces found in the
  indexed chunks, filled by the indexer off the commit thread, so that a name filter
  walks the id index (``collector.storage.names``).
- ``chunks``: each chunk's segment, seq range, row count, time range and state.
- ``ids``: event id -> seq, for dedupe. A UUID is kept as its 16 bytes (see ``id_key``),
  here and in the chunk rows; UUIDv7 ids are time-ordered, so inserts are near-append.
- ``zones``: min/max ``created`` per block of 1024 seqs, so a time window becomes seq
  ranges inside a chunk.
- ``segments``: each segment's name, header, how far it is indexed, compression.
- ``gz_blocks``: the block map of each compressed segment.
- ``sources``: per-source ranges of source_seq (see ``collector.storage.sources``).
- ``numbered``: per source, the highest number its batches said it had given out; and
  ``source_seen``: when the collector last stored an event of each source, and
  ``source_segment``: in which segment (what retention forgets sources by). Not derived
  from the segments, so a rebuild (``wipe``) keeps them.
- ``types``: every event type stored (so a glob becomes a list of exact names).
"""

from __future__ import annotations

from typing import Final

from collector.storage.chunks import EVENTS_TABLE, POSTINGS_TABLES

# 2: IPv4 client_ip keys are 4 bytes; 3: ids are 16 bytes; 4: org_name, workspace_name,
# the names table and the status index; 5: one events table and postings tables
# instead of a table and seven indexes per chunk. An index of another schema is rebuilt
# from the segments at start (``collector.storage.recovery``).
INDEX_SCHEMA: Final = 5
#: Meta key present while the index is brought up to date with the segments (start-up
#: repair, reindex): readers refuse it meanwhile, and after an interruption.
CATCHING_UP: Final = "catching_up"
CHUNK_ROWS: Final = 65_536
#: Closed chunks waiting for their postings before the store slows down to wait for the
#: indexer (each unindexed chunk costs a query a scan of up to CHUNK_ROWS rows).
MAX_UNINDEXED: Final = 4
ZONE_SHIFT: Final = 10


_SCHEMA = EVENTS_TABLE + POSTINGS_TABLES + """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments(
    seq INTEGER PRIMARY KEY, name TEXT NOT NULL, id TEXT NOT NULL, previous TEXT NOT NULL,
    created TEXT NOT NULL, compressed INTEGER NOT NULL DEFAULT 0,
    end_offset INTEGER NOT NULL, records INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS chunks(
    chunk INTEGER PRIMARY KEY, segment INTEGER NOT NULL, first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL, rows INTEGER NOT NULL, min_created INTEGER NOT NULL,
    max_created INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS chunks_segment ON chunks(segment);
-- The chunks not INDEXED (2) yet: few, looked up by every query (collector.query).
CREATE INDEX IF NOT EXISTS chunks_unindexed ON chunks(segment) WHERE state <> 2;
CREATE TABLE IF NOT EXISTS ids(id PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS zones(
    block INTEGER PRIMARY KEY, min_created INTEGER NOT NULL, max_created INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS zones_max ON zones(max_created);
CREATE TABLE IF NOT EXISTS types(type TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS names(kind TEXT NOT NULL, name TEXT NOT NULL, id TEXT NOT NULL,
    PRIMARY KEY(kind, name, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sources(source TEXT PRIMARY KEY, ranges TEXT NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS numbered(source TEXT PRIMARY KEY, highest INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS source_seen(source TEXT PRIMARY KEY, at_ns INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS source_segment(source TEXT PRIMARY KEY, segment INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gz_blocks(
    segment INTEGER NOT NULL, uoff INTEGER NOT NULL, coff INTEGER NOT NULL,
    PRIMARY KEY(segment, uoff)) WITHOUT ROWID;
"""
