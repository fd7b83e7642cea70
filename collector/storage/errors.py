"""Storage errors. Each message names the cause and says what to do."""

from __future__ import annotations


class StorageError(Exception):
    """The store could not do what was asked (the records of a failed write were not
    stored: nothing partial stays behind)."""


class StoreClosedError(StorageError):
    """A submission after ``Store.close()`` (or before ``Store.open()``)."""


class DataDirInUseError(StorageError):
    """Another process (a running collector, a reindex) holds the data directory."""


class CorruptSegmentError(StorageError):
    """A segment file that does not have the documented shape (bad header, a record
    that is not JSON in the middle of a segment)."""


class IndexOutOfDateError(StorageError):
    """The index points at bytes that are not the record it expects."""


class StorageSettingsError(StorageError, ValueError):
    """A storage setting out of range."""


class DiskFullError(StorageError):
    """The store could not open because its disk is full (its reserve, if it had one,
    released and not enough). Nothing was lost: it opens once space is freed."""
