"""The ``Reader`` each thread keeps open for ``collector.query``'s module-level functions
(``search``, ``iter_records``, ...): one per data directory, for the latest few, reopened
when the index file was replaced, closed when the thread ends or by ``close_readers``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Final

from collector.query_reader import Reader

if TYPE_CHECKING:
    from collector.store import Store

#: Data directories a thread keeps a Reader open for between calls; beyond these, the
#: one it used least recently is closed. A thread kept one for every directory it ever
#: queried, for good: one that went through many (a test run, a tool visiting several
#: collectors' directories) held about six descriptors each, ~700 by the end of tests/api.
KEEP_READERS: Final = 4


class _ThreadReaders:
    """One thread's Readers, by data directory, the most recently used last."""

    def __init__(self) -> None:
        self._readers: OrderedDict[Path, Reader] = OrderedDict()

    def get(self, data_dir: Path) -> Reader:
        reader = self._readers.get(data_dir)
        if reader is not None and reader.stale:  # the index was rebuilt since: reopen
            self.close(data_dir)
            reader = None
        if reader is None:
            reader = self._readers[data_dir] = Reader(data_dir)
        self._readers.move_to_end(data_dir)
        while len(self._readers) > KEEP_READERS:
            self._readers.popitem(last=False)[1].close()
        return reader

    def close(self, data_dir: Path | None = None) -> None:
        for key in list(self._readers) if data_dir is None else [data_dir]:
            reader = self._readers.pop(key, None)
            if reader is not None:
                reader.close()

    def __del__(self) -> None:
        # Run when the thread ends (its ``threading.local`` value is dropped): left to the
        # garbage collector, a Reader's SQLite connection was closed but its segment
        # files (plain descriptors, up to 16) never were, for each thread that queried.
        self.close()


_local = threading.local()


def _thread_readers() -> _ThreadReaders:
    readers: _ThreadReaders | None = getattr(_local, "readers", None)
    if readers is None:
        readers = _local.readers = _ThreadReaders()
    return readers


def _reader(index_path_or_store: Store | Path | str) -> Reader:
    return _thread_readers().get(_data_dir(index_path_or_store))


def close_readers(index_path_or_store: Store | Path | str | None = None) -> None:
    """Close the Readers the module-level functions (``search``, ``iter_records``, ...)
    keep open on this thread: the one of a data directory, or all of them (None). For
    a thread or a program done with a data directory (a test's, once its store is
    closed): its index and segment files are not held until the thread ends. A later
    call opens a new one."""
    readers: _ThreadReaders | None = getattr(_local, "readers", None)
    if readers is not None:
        readers.close(None if index_path_or_store is None
                      else _data_dir(index_path_or_store))


def _data_dir(index_path_or_store: Store | Path | str) -> Path:
    settings = getattr(index_path_or_store, "settings", None)
    if settings is not None:
        return Path(settings.data_dir).resolve()
    path = Path(index_path_or_store)  # type: ignore[arg-type]
    return (path.parent if path.name == "index.sqlite" else path).resolve()
