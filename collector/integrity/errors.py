"""Tamper-evidence errors. Each message names the cause and says what to do.

They are ``StorageError``\\ s: the store fails to open with one when its signing key
cannot be used, and ``serve`` prints it like any other storage problem.
"""

from __future__ import annotations

from collector.storage.errors import StorageError


class IntegrityError(StorageError):
    """Tamper evidence cannot do what was asked."""


class KeyFileError(IntegrityError):
    """A signing key or public key file that cannot be read or used."""


class DigestFormatError(IntegrityError):
    """A digest line that is not a digest this collector writes."""
