"""The spool's on-disk record format (``length, crc32, batch body``), and what is done
with a region of a spool file that is no valid record: the search for the next valid
record past it (``_next_record``) and the count of the events known lost in it
(``_events_between``). See ``spool``'s module doc for how the spool uses them."""

from __future__ import annotations

import os
import re
import struct
import zlib

import orjson

RECORD = struct.Struct("!II")  # body length, crc32 of body
#: Where a record may start, when looking for the next one past a corrupt region: a
#: length below 16 MiB (its first byte 0) and not 0 (a body is never empty). A batch
#: body is JSON text, which never holds a NUL byte: inside one, nothing matches, and
#: what matches elsewhere is taken only if its crc32 is right.
_RECORD_START = re.compile(rb"\x00(?!\x00\x00\x00)")
#: Bytes of crc32 the search for the next valid record may compute in a file, each place
#: looked at counted as 1 KiB: at most about half a second, whatever the bytes.
_SCAN_BUDGET = 512 * 1024 * 1024
#: Bytes read at first when looking for the next record past a damaged region, doubled
#: while none is found, up to ``_WINDOW_MAX``: the cost follows the distance to it.
_WINDOW_MIN = 512
_WINDOW_MAX = 1024 * 1024


def _torn_record_at(fd: int, pos: int, end: int) -> bool:
    """Whether a file of ``end`` bytes with no valid record from ``pos`` on has this
    format's record cut short there: less than a record header, a header of zeros (a
    power loss), or a header whose length (below 16 MiB, as ``_RECORD_START`` takes)
    runs past the end. Anything else (another release's format) is set aside, not
    removed."""
    header = os.pread(fd, RECORD.size, pos)
    if len(header) < RECORD.size:
        return True
    length, _ = RECORD.unpack(header)
    return header == bytes(RECORD.size) or (header[0] == 0 and length > 0
                                            and pos + RECORD.size + length > end)


def _record_at(fd: int, pos: int, end: int) -> bytes | None:
    """The body of the valid record at ``pos`` of a file of ``end`` bytes, or None."""
    if pos + RECORD.size > end:
        return None
    header = os.pread(fd, RECORD.size, pos)
    if len(header) < RECORD.size:
        return None  # the file was cut short of its known end: a damaged region
    length, crc = RECORD.unpack(header)
    start = pos + RECORD.size
    # A body is never empty (its header line): zeros, which a power loss can leave
    # where the size reached the disk before the data, would otherwise pass as records
    # of length 0 (crc32 of nothing is 0).
    if 0 < length and start + length <= end:
        body = os.pread(fd, length, start)
        if len(body) == length and zlib.crc32(body) == crc:
            return body
    return None


def _next_record(fd: int, start: int, end: int, budget: int) -> tuple[int, int]:
    """Where the first valid record after ``start`` (which holds none) begins in the
    file ``fd`` of ``end`` bytes, ``end`` when none is found; and what is left of
    ``budget``. First where the region's own length says (only its body was damaged:
    this finds a record of any size); else the first place that could start a record
    (``_RECORD_START``) and holds a whole one whose crc32 matches, followed by the end
    of the file or by what could start a record too (a NUL byte, or a header cut short).
    That last check, which random bytes pass once in 256 times, keeps the search
    through 8 MiB of random bytes to about 0.2 s (a byte read apart for each place whose
    record would end past the window read); and ``budget`` (``_SCAN_BUDGET`` for a
    whole file) bounds the work whatever the bytes: past it, the rest of the file is
    counted as corrupt. Not found (counted as corrupt): a record of 16 MiB or more, or
    one directly followed by a second damaged region; never replayed unchecked.

    The file is read in windows from ``start``, doubled while nothing is found: each
    damaged region costs reads as long as the distance to the next record (and the
    candidates it checks), not the rest of the file."""
    own = os.pread(fd, RECORD.size, start)
    length: int = RECORD.unpack(own)[0] if len(own) == RECORD.size else 0
    after = start + RECORD.size + length
    following = os.pread(fd, RECORD.size, after) if 0 < length and after < end else b""
    if len(following) == RECORD.size:
        budget -= min(RECORD.unpack(following)[0], end - after)  # its crc32, at most
        if budget >= 0 and _record_at(fd, after, end) is not None:
            return after, budget
    base, window, first = start, _WINDOW_MIN, 1
    while base < end:
        # RECORD.size bytes more than the window: a header at its last place is whole,
        # and _RECORD_START's look-ahead sees what follows, as in one read of the rest.
        data = os.pread(fd, min(window + RECORD.size, end - base), base)
        places = min(window, len(data))
        # Zeros (a power loss leaves them) start no record, yet the search tries one at
        # each, outside the budget: a run of them is passed at C speed, to 3 bytes
        # before the first other byte (a record's first byte is 0, and one of its next
        # three is not).
        first = max(first, len(data) - len(data.lstrip(b"\x00")) - 3)
        for match in _RECORD_START.finditer(data, first):
            if match.start() >= places:
                break
            pos = base + match.start()
            budget -= 1024  # what a place costs to look at, counted as bytes of crc32
            if pos + RECORD.size > end or budget < 0:
                return end, max(budget, 0)
            if match.start() + RECORD.size > len(data):
                break  # the file was cut short under us, inside this header
            length, crc = RECORD.unpack_from(data, match.start())
            stop = pos + RECORD.size + length
            if stop > end or not (stop == end or end - stop < RECORD.size
                                  or _byte_at(fd, data, base, stop) == 0):
                continue
            budget -= length
            if budget < 0:
                return end, 0
            if stop - base <= len(data):
                body: bytes | memoryview = memoryview(data)[match.start() + RECORD.size:
                                                            stop - base]
            else:
                body = os.pread(fd, length, pos + RECORD.size)
            if len(body) == length and zlib.crc32(body) == crc:
                return pos, budget
        if len(data) < min(window + RECORD.size, end - base):
            break  # the file was cut short under us
        base += places
        window, first = min(window * 2, _WINDOW_MAX), 0
    return end, budget


def _size_of(fd: int, default: int) -> int:
    """The file's size now, or ``default`` when even that cannot be known."""
    try:
        return os.fstat(fd).st_size
    except OSError:
        return default


def _byte_at(fd: int, data: bytes, base: int, pos: int) -> int:
    """The byte at ``pos`` of the file, from ``data`` (read at ``base``) if it holds it."""
    if pos - base < len(data):
        return data[pos - base]
    byte = os.pread(fd, 1, pos)
    return byte[0] if byte else -1


#: A batch header line as ``wire.encode_batch_body`` writes it (orjson: no spaces, its
#: keys in this order, newlines in the source escaped), up to its newline or the end of
#: the region. No part of it can start another one (a ``{`` inside the string is
#: followed by a quote that ends it), so finding them all reads the region about once.
_HEADER = re.compile(rb'\{"source":"(?:[^"\\\n]|\\.)*","seqs":\[[0-9,]*\]'
                     rb'(?:,"numbered":[0-9]+)?\}(?=\n|\Z)')


def _events_in(region: bytes) -> int:
    """The events of the batches whose header line (``{"source": ..., "seqs": [...]}``)
    can still be read in a corrupt region: those known lost. A header lost with the
    rest hides its events, as ``corrupt_bytes`` then says. Only what has a header's
    shape is parsed: each ``{"source":`` parsed to the next newline cost k x n bytes
    for k of them in a region of n bytes without one."""
    count = 0
    for match in _HEADER.finditer(region):
        try:
            header = orjson.loads(match[0])
        except orjson.JSONDecodeError:
            continue  # damaged (an escape, a number) in a way the shape does not see
        if type(header) is dict and type(header.get("source")) is str and type(
                header.get("seqs")) is list:
            count += len(header["seqs"])
    return count


#: Bytes of a damaged region read at a time to count its events (``_events_between``).
_COUNT_SLICE = 4 * 1024 * 1024


def _events_between(fd: int, start: int, stop: int) -> int:
    """``_events_in`` the bytes from ``start`` to ``stop`` of the file ``fd``, read a
    slice at a time: read whole, a region as large as a huge file (zeroed by a power
    loss) took as much memory. A slice is counted up to its last newline, which no
    header line crosses; the rest goes on with the next slice (its last ``_COUNT_SLICE``
    bytes: a longer line is no header a reader could count)."""
    count, rest, pos = 0, b"", start
    while pos < stop:
        data = os.pread(fd, min(_COUNT_SLICE, stop - pos), pos)
        if not data:
            break  # the file was cut short under us
        pos += len(data)
        data = rest + data
        cut = len(data) if pos >= stop else data.rfind(b"\n") + 1
        count += _events_in(data[:cut])
        rest = data[cut:][-_COUNT_SLICE:]
    return count + _events_in(rest)


def _write_all(fd: int, data: bytes, offset: int, written: list[int] | None = None) -> None:
    """Write all of ``data`` at ``offset``; ``written[0]`` counts the bytes written,
    for a caller whose write failed part way."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
        if written is not None:
            written[0] += n
