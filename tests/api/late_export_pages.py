"""``python -m collector`` whose exports are cut by ``query_timeout`` after their first
bytes: export pages of ``PAGE`` records, and the query clock jumps far ahead while the
third page is read (as if that read had taken longer than any limit). No test can make
a read slow on cue; the limit, its error and the export's handling of it are the real
ones."""

from __future__ import annotations

import itertools
from typing import Any, Final

from collector.api import exports
from collector.cli import main
from collector.query import Reader
from collector.storage import time_limit

#: Records per export page here (the collector's: 1,000).
PAGE: Final = 2
#: The page whose read runs past the limit: the first is read before the response
#: starts, the second's bytes are sent before the third is read.
LATE_PAGE: Final = 3

search = Reader.search
monotonic = time_limit.monotonic
_pages = itertools.count(2)  # the pages read on from a cursor: the 2nd, the 3rd, ...
_ahead = 0.0


def _clock() -> float:
    return monotonic() + _ahead


def late_search(reader: Reader, *args: Any, **kwargs: Any) -> Any:
    global _ahead
    if kwargs.get("cursor") is not None and next(_pages) == LATE_PAGE:
        _ahead = 10.0**6  # past the limit of the query under way, not of later ones
    return search(reader, *args, **kwargs)


if __name__ == "__main__":
    exports.PAGE = PAGE  # type: ignore[misc]
    time_limit.monotonic = _clock
    Reader.search = late_search  # type: ignore[method-assign]
    raise SystemExit(main())
