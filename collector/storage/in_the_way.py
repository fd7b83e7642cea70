"""Something else where the store keeps a directory or its lock file: refused by name.

Whoever can write the data directory can leave a FIFO, a file or a directory where
``quarantine/`` or ``store.lock`` goes. The system call's own words ("[Errno 17] File
exists", "Is a directory") said neither what was there nor what to do.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from audit_middleware._dirs import make_dirs

from .errors import StorageError
from .regular_files import kind_of_mode

__all__ = ["QUARANTINE", "SEGMENTS", "InTheWayError", "in_the_way", "make_store_dir"]

#: What the store keeps at its paths, as its errors name them.
QUARANTINE = "the quarantine/ directory (what start-up repair cuts from segments)"
SEGMENTS = "the segments/ directory (the stored records)"


class InTheWayError(StorageError):
    """Something that is not what the store keeps there sits at one of its paths."""


def kind_of(path: Path) -> str:
    """What ``path`` is, in words (followed, as an open follows it)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a symbolic link to nothing"
    return kind_of_mode(mode, "not a file or a directory")


def in_the_way(path: Path, belongs: str) -> InTheWayError:
    """The error for ``path``, which is not ``belongs`` (what the store keeps there)."""
    aside = shlex.quote(f"{path}.aside")
    return InTheWayError(
        f"{path} is {kind_of(path)}, where the collector keeps {belongs}: look at what it "
        f"is, move it out of the way (`mv {shlex.quote(str(path))} {aside}`), then start "
        f"the collector (or the reindex) again: it makes a new one")


def make_store_dir(path: Path, mode: int, belongs: str) -> None:
    """``make_dirs(path, mode)``; ``InTheWayError`` when something else is there."""
    try:
        make_dirs(path, mode)
    except FileExistsError:
        raise in_the_way(path, belongs) from None
