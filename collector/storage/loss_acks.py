"""Acknowledged losses: an operator's word that a source's missing numbers, up to some
number, are known (the app was killed on purpose, the loss was investigated).

The store reports every number a source gave out and never delivered (``sources``:
gaps, unreceived tails), and its metrics total them for alerting. Without a way to say
"known", an alert on them fires until retention forgets the source, months later, and
an operator learns to ignore it: the next, real loss goes unseen. An acknowledgement
covers a source's numbers up to ``through``; a loss after it counts again. The totals
still count every loss (``gap_events``); ``unacknowledged_*`` are what to alert on.

Kept in ``<data_dir>/loss-acks.json`` (0640, replaced atomically): the index is derived
from the segments and rebuilt at will, and an operator's word is not in the segments.
Who acknowledged what, and why, is also an audit record of its own
(``audit_loss_acknowledged``, written by the API before the acknowledgement applies).

The record is what makes an acknowledgement: the new file is written beside its place
first (``stage``), naming the id of the record that will claim it, then the record is
written, then the file is renamed into place (``commit``). A file staged whose record
was never written is removed at the next start; one whose record was written (a rename
that failed, a stop in between) is put in place then (``staged``). So a record always
has its acknowledgement, and an acknowledgement its record.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from audit_middleware.wire import MAX_SEQ

from .regular_files import fsync_dir, read_regular, replace_file, write_new_file
from .segments import FILE_MODE

log = logging.getLogger("collector.store")

FILE_NAME: Final = "loss-acks.json"
STAGED_NAME: Final = f".{FILE_NAME}.staged"
FORMAT: Final = 1
#: Characters of a reason (an acknowledgement says why in a sentence or two).
MAX_REASON: Final = 400  # escaped quotes double it: its record still fits MAX_STATUS
_MAX_FILE_BYTES: Final = 64 * 1024 * 1024
#: What a file that is not one of acknowledgements raises as it is read.
_NOT_ACKS: Final = (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError)

Ranges = list[list[int]]


@dataclass(frozen=True)
class Ack:
    through: int  # numbers up to this one are acknowledged
    at: str  # RFC 3339 UTC
    by: str  # the reader who said so
    reason: str


def load(data_dir: Path) -> dict[str, Ack]:
    """The acknowledgements kept in ``data_dir`` ({} when there are none). A file that
    cannot be read is logged and taken as none: every loss then counts as unacknowledged
    (an alert too many, never one too few), and the collector still starts."""
    path = data_dir / FILE_NAME
    try:
        return _read(path)[0]
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.error("audit store: cannot read %s (%s): every loss counts as unacknowledged "
                  "until an acknowledgement rewrites it", path, exc)
    except _NOT_ACKS as exc:
        log.error("audit store: %s is not a file of loss acknowledgements (%s): every loss "
                  "counts as unacknowledged until an acknowledgement rewrites it", path, exc)
    return {}


def staged(data_dir: Path) -> tuple[dict[str, Ack], str | None] | None:
    """The file a store left staged in ``data_dir`` (None: none): its acknowledgements
    and the id of the record that claims them (None: no record was to; or the file is
    unreadable, and so taken for one whose record was never written)."""
    path = data_dir / STAGED_NAME
    try:
        acks, record = _read(path)
    except FileNotFoundError:
        return None
    except (OSError, *_NOT_ACKS) as exc:
        log.warning("audit store: %s left staged is unreadable (%s): taken as an "
                    "acknowledgement never recorded", path, exc)
        return {}, None
    return acks, record


def claimed(left: tuple[dict[str, Ack], str | None],
            recorded: Callable[[str], bool]) -> bool:
    """Whether ``left``, a staged file (``staged``), is an acknowledgement made: its
    record was written (``recorded(id)``: is that id stored). The record is what makes
    an acknowledgement, its rename into place may come later (see the module's
    docstring)."""
    return left[1] is not None and recorded(left[1])


def in_effect(data_dir: Path, recorded: Callable[[str], bool]) -> dict[str, Ack]:
    """The acknowledgements that apply in ``data_dir``, by the rule a start applies: a
    staged file ``claimed`` by its record, else the file in place. What a reader of the
    files (``audit-collector losses``) sees then is what the running store applies,
    its rename pending or not."""
    left = staged(data_dir)
    if left is not None and claimed(left, recorded):
        return left[0]
    return load(data_dir)


def _read(path: Path) -> tuple[dict[str, Ack], str | None]:
    body = orjson.loads(read_regular(path, _MAX_FILE_BYTES))
    if body.get("format") != FORMAT:
        raise ValueError(f"format {body.get('format')!r}, not {FORMAT}")
    record = body.get("record")
    acks = {str(source): _ack(value) for source, value in body["sources"].items()}
    return acks, record if isinstance(record, str) else None


def _ack(value: Any) -> Ack:
    through = value["through"]
    if type(through) is not int or not 1 <= through <= MAX_SEQ:
        raise ValueError(f"through {through!r} is not a number from 1 to 2**63-1")
    return Ack(through, str(value["at"]), str(value["by"]), str(value["reason"]))


def save(data_dir: Path, acks: Mapping[str, Ack]) -> None:
    commit(stage(data_dir, acks))


def stage(data_dir: Path, acks: Mapping[str, Ack], record: str | None = None) -> Path:
    """Write ``acks`` beside the file (fsynced), to take its place at ``commit``: all
    that can fail for want of space fails here, before the acknowledgement is recorded.
    ``record``: the id of the audit record that will claim it (see the module's
    docstring). One staged file at a time (the store's lock)."""
    path = data_dir / STAGED_NAME
    write_new_file(path, _encode(acks, record), FILE_MODE)
    if record is not None:
        # Its name durable too, before the record that claims it (fsynced in another
        # directory, segments/): after a power loss, the record without the file was
        # an acknowledgement claimed and never made.
        try:
            fsync_dir(data_dir)
        except OSError:
            path.unlink(missing_ok=True)
            raise
    return path


def restage(data_dir: Path, acks: Mapping[str, Ack], record: str) -> Path:
    """Replace the staged file of an acknowledgement ``record`` made (its rename still
    to come) by ``acks``, what applies now, atomically: a failure leaves the file that
    was staged, never none (``stage`` removes it first, and the acknowledgement made
    would be gone at the next start)."""
    path = data_dir / STAGED_NAME
    replace_file(path, _encode(acks, record), FILE_MODE)
    return path


def _encode(acks: Mapping[str, Ack], record: str | None) -> bytes:
    body: dict[str, Any] = {"format": FORMAT,
                            "sources": {s: asdict(a) for s, a in sorted(acks.items())}}
    if record is not None:
        body["record"] = record
    return orjson.dumps(body, option=orjson.OPT_INDENT_2)


def commit(staged: Path) -> None:
    """Put a staged file in place; raises ``OSError`` if the rename fails (nothing
    changed). A directory that cannot be synced after it is logged, not raised: the
    rename is done (a crash before the directory reaches the disk may undo it, and
    leaves the staged file for the next start to find: see ``staged``)."""
    os.replace(staged, staged.with_name(FILE_NAME))
    try:
        fsync_dir(staged.parent)
    except OSError as exc:
        log.warning("audit store: %s is in place, but its directory could not be synced "
                    "(%s)", staged.with_name(FILE_NAME), exc)


def made_already(acks: Mapping[str, Ack], plan: Mapping[str, int], *, by: str,
                 reason: str) -> bool:
    """Whether every acknowledgement of ``plan`` is in ``acks`` already, through the same
    number, by the same reader, for the same reason: the same acknowledgement again (a
    client that gave up waiting for the answer, and asked again). Made and recorded the
    first time, it is answered without a second record. An empty plan (every source
    acknowledged already) acknowledges nothing, and has nothing to record either."""
    return all(name in acks and (acks[name].through, acks[name].by, acks[name].reason)
               == (upto, by, reason) for name, upto in plan.items())


def unacknowledged(ranges: Ranges, numbered: int, through: int) -> tuple[int, int]:
    """(gap events, unreceived tail events) of a source numbered after ``through``.

    A folded range's missing numbers have no known place inside it: as many count as
    can be after ``through``, every one of them, or fewer when fewer of the range's
    numbers are after it (an alert too many, never one too few). A folded range that
    straddles ``through`` is what a source that keeps losing events makes of its
    acknowledged losses: counted whole, thousands acknowledged came back as new."""
    gap_events = 0
    for previous, current in itertools.pairwise(ranges):
        first, last = max(previous[1] + 1, through + 1), current[0] - 1
        gap_events += max(0, last - first + 1)
    gap_events += sum(min(r[2], r[1] - max(through, r[0] - 1))
                      for r in ranges if len(r) > 2 and r[1] > through)
    stored = ranges[-1][1] if ranges else 0
    tail_events = max(0, numbered - max(stored, through))
    return gap_events, tail_events


def latest(ranges: Ranges, numbered: int) -> int:
    """The highest number a source is known to have given out: what acknowledging
    "everything so far" covers."""
    return max(numbered, ranges[-1][1] if ranges else 0)
