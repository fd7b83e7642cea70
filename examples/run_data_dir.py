"""``make run``'s data directory: ``DATA_DIR`` (default ``audit-data``), checked before
anything starts, so that a value the collector or the sink would refuse later (and less
clearly: a collector log line, or events spooled because the socket cannot be reached)
is said up front, with what to do."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from collector.listen import UNIX_PATH_LIMIT
from collector.storage.data_dir_lock import data_dir_held

DEFAULT = Path("audit-data")
SOCKET = "collector.sock"


class DataDirError(Exception):
    """DATA_DIR names no directory the collector could use; the message says why."""


def data_dir_from_env() -> Path:
    raw = os.environ.get("DATA_DIR")
    if raw is None:
        return checked(DEFAULT)
    if not raw.strip():
        raise DataDirError("DATA_DIR is empty: name the collector's data directory, e.g. "
                           "DATA_DIR=audit-data-2 make run (unset, it is ./audit-data)")
    try:
        data_dir = Path(raw).expanduser()
    except RuntimeError:  # ~name of no such user: Python's words name neither
        raise DataDirError(f"DATA_DIR={raw}: {raw.split('/')[0]} is no user's home "
                           f"directory here: give the path itself, e.g. "
                           f"DATA_DIR=/tmp/audit-data make run") from None
    return checked(data_dir)


def checked(data_dir: Path) -> Path:
    setting = f"DATA_DIR={data_dir}"
    try:
        _check(data_dir, setting)
    except OSError as exc:  # a parent that may not be looked into, say
        raise DataDirError(f"{setting} cannot be used: {exc.strerror} ({exc.filename}): "
                           f"choose another, e.g. DATA_DIR=/tmp/audit-data make run") from None
    return data_dir


def _check(data_dir: Path, setting: str) -> None:
    if data_dir.exists() and not data_dir.is_dir():
        other = shlex.quote(suggestion(data_dir))  # pasted into a shell: a space
        raise DataDirError(f"{setting} is a file, not a directory: choose a directory "
                           f"(made if missing), e.g. DATA_DIR={other} make run")
    # The directory, or where it would be made (every missing parent is made too). A
    # link is there even when what it names is not: lexists, not exists.
    existing = data_dir.absolute()
    while not os.path.lexists(existing):
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        # mkdir finds the link in the way (the collector's too), and resolving a loop
        # raised RuntimeError: a traceback either way.
        raise DataDirError(f"{setting} cannot be used: {existing} is a symbolic link to "
                           f"nothing (its target is missing, or the links loop): point it "
                           f"at a directory, or choose another, e.g. "
                           f"DATA_DIR=/tmp/audit-data make run")
    if not existing.is_dir():
        raise DataDirError(f"{setting} cannot be made: {existing} is a file, not a "
                           f"directory: choose a path under a directory, e.g. "
                           f"DATA_DIR=/tmp/audit-data make run")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataDirError(f"{setting}: {existing} is not writable by this user: choose "
                           f"a directory you may write, e.g. DATA_DIR=/tmp/audit-data make run")
    _check_socket_path(data_dir, setting)


def _check_socket_path(data_dir: Path, setting: str) -> None:
    """The collector listens on ``<data_dir>/collector.sock`` and the sink connects to it
    by its absolute path: both must fit a unix socket address (the collector refuses
    one that does not; the sink could never connect, and spooled every event)."""
    socket = data_dir / SOCKET
    longest = max((os.fsencode(p) for p in (socket, socket.resolve())), key=len)
    if len(longest) >= UNIX_PATH_LIMIT:
        raise DataDirError(
            f"{setting} is too long: the collector's socket would be {os.fsdecode(longest)}, "
            f"{len(longest)} bytes, and a unix socket path must stay under "
            f"{UNIX_PATH_LIMIT}: choose a shorter one, e.g. DATA_DIR=/tmp/audit-data make run")


def in_use(data_dir: Path) -> bool:
    """Whether another process (a collector, a reindex) holds ``data_dir`` now."""
    return data_dir_held(data_dir)


def suggestion(data_dir: Path) -> str:
    """Another data directory beside ``data_dir`` to run with: ``audit-data-2`` for
    ``audit-data``, ``audit-data-3`` for ``audit-data-2``, skipping any in use."""
    if not data_dir.name:  # "." or "/"
        data_dir = data_dir.absolute() if data_dir.absolute().name else DEFAULT
    match = re.fullmatch(r"(.*)-(\d+)", data_dir.name)
    stem, number = (match[1], int(match[2]) + 1) if match else (data_dir.name, 2)
    while True:
        candidate = data_dir.with_name(f"{stem}-{number}")
        # lexists: a link to nothing is in the way as a file is (``_check``).
        if not (os.path.lexists(candidate)
                and (not candidate.is_dir() or in_use(candidate))):
            return str(candidate)
        number += 1
