"""Something else where the store keeps a directory or a file: refused by name.

Whoever can write the data directory can leave a FIFO, a file or a directory where
``quarantine/``, ``segments/``, ``digests/``, a segment file or ``store.lock`` goes.
The system call's own words ("[Errno 17] File exists", "Is a directory", "a FIFO, not
a regular file") said neither what was there nor what to do.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from audit_middleware._dirs import make_dirs

from .errors import StorageError
from .regular_files import NotRegularFileError, kind_of_mode

__all__ = ["DIGESTS", "DIGESTS_THEN", "QUARANTINE", "SEGMENTS", "SEGMENTS_THEN",
           "SEGMENT_FILE", "SEGMENT_FILE_THEN_START", "InTheWayError",
           "SegmentFileInTheWayError", "in_the_way", "in_the_way_words",
           "make_store_dir", "not_a_segment_file", "refuse_other_than_a_dir",
           "restore_then", "said_by_the_collector", "segment_files_named"]

#: What the store keeps at its paths, as its errors name them.
QUARANTINE = "the quarantine/ directory (what start-up repair cuts from segments)"
SEGMENTS = "the segments/ directory (the stored records)"
DIGESTS = "the digests/ directory (the signed digests of the segments)"
SEGMENT_FILE = "a segment file (stored records)"

#: What to do once it is out of the way, for what the collector makes afresh.
MAKES_A_NEW_ONE = "then start the collector (or the reindex) again: it makes a new one"


def restore_then(what: str, again: str) -> str:
    """What to do once it is out of the way, for ``what`` a new one cannot replace
    (records, digests): put it back, then ``again``."""
    return f"then put {what} back from a backup and {again}"


#: ... for segments/ met by a command that reads it (query, tail, reindex, keys rotate).
SEGMENTS_THEN = restore_then(
    "segments/", "run this again (without a backup its records are lost: a collector "
    "started without it makes a new, empty one)")


#: ... for digests/ (serve's start, keys rotate, verify).
DIGESTS_THEN = restore_then(
    "digests/", "run this again (without a backup, the collector makes a new one, and "
    "`audit-collector verify` reports the segments signed before as 'digest missing')")


class InTheWayError(StorageError):
    """Something that is not what the store keeps there sits at one of its paths."""


def kind_of(path: Path) -> str:
    """What ``path`` is, in words (followed, as an open follows it)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a symbolic link to nothing"
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        return "a loop of symbolic links"
    return kind_of_mode(mode, "not a file or a directory")


def in_the_way_words(path: Path, belongs: str, then: str = MAKES_A_NEW_ONE) -> str:
    """What is at ``path``, which is not ``belongs`` (what the store keeps there), and
    what to do: move it aside, ``then`` ..."""
    aside = shlex.quote(f"{path}.aside")
    return (f"{path} is {kind_of(path)}, where the collector keeps {belongs}: look at what "
            f"it is, move it out of the way (`mv {shlex.quote(str(path))} {aside}`), {then}")


def in_the_way(path: Path, belongs: str, then: str = MAKES_A_NEW_ONE) -> InTheWayError:
    """The error for ``path``, which is not ``belongs`` (what the store keeps there)."""
    return InTheWayError(in_the_way_words(path, belongs, then))


def refuse_other_than_a_dir(path: Path, belongs: str, then: str = MAKES_A_NEW_ONE) -> None:
    """``InTheWayError`` when something other than a directory (followed) is at
    ``path``, a symbolic link that leads to none included; nothing when there is none.
    ``PermissionError`` (its filename ``path``) when this user may not look at it: let
    through, that was "no audit data" or "not a collector data directory" further on,
    to a reader who was only not the collector's user."""
    try:
        mode = os.stat(path).st_mode
    except PermissionError:
        raise
    except OSError as exc:
        # A link to nothing, or a loop of links (ELOOP), is there all the same: read as
        # "none", it was "nothing here was ever signed", or a mkdir's "File exists".
        leads_nowhere = isinstance(exc, FileNotFoundError) or exc.errno == errno.ELOOP
        if leads_nowhere and os.path.lexists(path):
            raise in_the_way(path, belongs, then) from None
        return
    if not stat.S_ISDIR(mode):
        raise in_the_way(path, belongs, then)


def make_store_dir(path: Path, mode: int, belongs: str,
                   then: str = MAKES_A_NEW_ONE) -> None:
    """``make_dirs(path, mode)``; ``InTheWayError`` when something else is there."""
    try:
        make_dirs(path, mode)
    except FileExistsError:
        raise in_the_way(path, belongs, then) from None


#: What to do once a segment file's impostor is out of the way: it holds none of them.
_SEGMENT_FILE_THEN = restore_then(
    "the segment file", "run this again (without a backup its records are lost: "
    "`audit-collector verify` names the segment missing, and `audit-collector reindex`, "
    "the collector stopped, indexes the store without it)")


#: ... for serve's start, which refuses to start with it there: "run this again" was
#: not serve's, and a start with the file moved away and no backup goes on without it.
SEGMENT_FILE_THEN_START = restore_then(
    "the segment file", "start the collector again (without a backup its records are "
    "lost: once the file is moved away, the collector starts without them, dropping them "
    "from the index, and `audit-collector verify` names the segment missing)")


#: ... in the collector's own log (the query API's requests, the forwarder's reads),
#: where "run this again" meant nothing: nothing of it is to be run again, its next
#: read of the file (a request, the forwarder's retry) finds what is there then.
_SEGMENT_FILE_THEN_SERVING = restore_then(
    "the segment file", "the running collector reads it at its next request and its "
    "forwarder's next retry, with no restart (without a backup its records are lost: "
    "once the file is moved away, queries answer and the forwarder goes on without "
    "them, and `audit-collector verify` names the segment missing)")


def not_a_segment_file(exc: NotRegularFileError,
                       then: str = _SEGMENT_FILE_THEN) -> NotRegularFileError:
    """``exc`` (a segment file found to be a FIFO, a device or a directory) in the
    words above, for a command (``then``: serve's start has its own): what it is, and
    what to do. Still a
    ``NotRegularFileError`` of the same file (``filename``): the collector says it
    in its own words (``said_by_the_collector``); the commands print its words."""
    path = Path(exc.filename)
    return NotRegularFileError(exc.errno, in_the_way_words(path, SEGMENT_FILE, then),
                               exc.filename)


class SegmentFileInTheWayError(NotRegularFileError):
    """Something else in a segment file's place, met by the running collector
    (``said_by_the_collector``): the store's state, not a fault. Its own class so that
    whoever meets it later, without the data directory at hand (an export cut after its
    first bytes: ``api.export_cuts``), tells it from another file's."""


def said_by_the_collector(exc: NotRegularFileError,
                          segments_dir: Path) -> SegmentFileInTheWayError | None:
    """``exc`` in the words of a running collector's log, when its file is one of
    ``segments_dir`` (read by the query API or the forwarder); None for another file."""
    if exc.filename is None or Path(exc.filename).parent != segments_dir:
        return None
    return SegmentFileInTheWayError(exc.errno, in_the_way_words(
        Path(exc.filename), SEGMENT_FILE, _SEGMENT_FILE_THEN_SERVING), exc.filename)


@contextmanager
def segment_files_named(segments_dir: Path,
                        then: str = _SEGMENT_FILE_THEN) -> Iterator[None]:
    """A ``NotRegularFileError`` for a file of ``segments_dir`` raised within, said
    with what to do (``not_a_segment_file``, ``then``)."""
    try:
        yield
    except NotRegularFileError as exc:
        if exc.filename is None or Path(exc.filename).parent != segments_dir:
            raise
        raise not_a_segment_file(exc, then) from None
