"""Complete lines out of a stream of chunks, in linear time.

Joining what is left of a line to each new chunk (``rest + chunk``) copies a long line
again for every chunk it spans: quadratic, seconds for a few hundred MiB without a
newline, which anyone who can write a segment can append. ``LineSplitter`` sets the
start of an unfinished line aside and joins it once, when it ends.
"""

from __future__ import annotations

from typing import Final

__all__ = ["OVERLONG", "LineSplitter"]

#: What stands for a line past ``max_line`` (its bytes are counted, not kept).
OVERLONG: Final = b"(a line too long to be a record)"


class LineSplitter:
    """``feed`` chunks, get the lines they complete (without their ``\\n``).

    ``max_line``: a longer line is not kept; ``OVERLONG`` stands for it in the list,
    and ``overlong`` maps its index in that list to its length. None keeps every line
    whole (whoever hashes or copies the lines needs their bytes)."""

    def __init__(self, max_line: int | None = None) -> None:
        self.max_line = max_line
        self._pending: list[bytes] = []
        self.pending_bytes = 0  # bytes of the line not ended yet
        self.overlong: dict[int, int] = {}  # of the last feed: list index -> line length

    def feed(self, chunk: bytes) -> list[bytes]:
        self.overlong = {}
        cut = chunk.rfind(b"\n")
        if cut < 0:
            self._add(chunk)
            return []
        first = chunk.find(b"\n")
        self._add(chunk[:first])
        lines = [self._take()]
        if first < cut:
            lines += chunk[first + 1:cut].split(b"\n")
        self._add(chunk[cut + 1:])
        return lines

    def _add(self, piece: bytes) -> None:
        self.pending_bytes += len(piece)
        if self.max_line is None or self.pending_bytes <= self.max_line:
            self._pending.append(piece)
        else:
            self._pending.clear()

    def _take(self) -> bytes:
        size = self.pending_bytes
        if self.max_line is not None and size > self.max_line:
            self.overlong[0] = size
            line = OVERLONG
        else:
            line = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self.pending_bytes = 0
        return line
