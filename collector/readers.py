"""Reader accounts: who may read the audit logs through the query API and the panel.

A reader has a name, a role (root or not) and one bearer token. The token is shown once,
when the reader is added; the file keeps only its SHA-256. Tokens are 256 random bits,
so a fast hash is enough (a slow password hash protects guessable secrets; these are
not guessable) and lets every request be checked in microseconds.

A token reads ``ac_<key id>_<secret>``: the key id finds the reader without comparing
against every hash, and the hashes are compared with ``hmac.compare_digest``. An unknown
key id is compared against a dummy hash so that it costs the same time.

The accounts live in ``<data_dir>/readers.json`` (mode 0600, replaced atomically). The
collector re-reads the file when it changes, so ``audit-collector users remove NAME``
revokes a token at once, without a restart. A change is told by the file's stamp (inode,
times, size), which proves nothing while the file is as young as a timestamp tick: see
``SETTLED_NS``.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from audit_middleware._dirs import make_dirs
from collector.ownership import user_name
from collector.storage.regular_files import read_regular, replace_file

__all__ = ["READERS_FILE", "SETTLED_NS", "Reader", "ReaderError", "Readers"]

READERS_FILE: Final = "readers.json"
_LOCK_FILE: Final = "readers.lock"
_FORMAT: Final = 1
#: A reader's entry is ~250 bytes: 16 MiB is tens of thousands of readers, far past any
#: store's; a larger file is not one `users add` wrote.
MAX_READERS_BYTES: Final = 16 * 1024 * 1024
NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_TOKEN_RE: Final = re.compile(r"ac_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_DUMMY_HASH: Final = hashlib.sha256(b"no such reader").hexdigest()
#: How much older than the moment it was looked at ``readers.json`` must be (its mtime
#: and ctime) for its stamp to prove, later, that it has not changed. File times come
#: from a coarse clock (a jiffy, 1-10 ms; whole seconds on file systems that store no
#: more, ext3's small inodes, HFS+, some NFS servers), and an inode freed by a rename is
#: reused: a same-size rewrite within one tick of the reading kept the stamp, and the
#: collector the old accounts for good, a revoked token working ("racy git"). 2 s: a
#: whole-second tick, the coarse clock's lag behind ``time.time_ns`` and a second of
#: slack for an NFS server's clock; a file younger than that is read again at each look.
SETTLED_NS: Final = 2_000_000_000


class ReaderError(ValueError):
    """A reader account operation that cannot be done; the message says what to do."""


@dataclass(frozen=True)
class Reader:
    name: str
    root: bool
    key_id: str
    token_sha256: str
    created: str  # RFC 3339 UTC

    @property
    def role(self) -> str:
        return "root" if self.root else "reader"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class Readers:
    """The reader accounts of one data directory (thread-safe)."""

    def __init__(self, data_dir: Path, *, clock: Callable[[], int] = time.time_ns) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / READERS_FILE
        self._clock = clock  # the wall clock, as file times are: ns since the epoch
        self._lock = threading.Lock()
        #: The stamp of the file last read, once it is settled; None: read it again.
        self._stamp: tuple[int, int, int, int] | None = None
        self._by_key: dict[str, Reader] = {}

    # -- reading ------------------------------------------------------------------------
    def all(self) -> list[Reader]:
        with self._lock:
            self._refresh()
            return sorted(self._by_key.values(), key=lambda r: r.name)

    def authenticate(self, token: object, *, refresh: bool = True) -> Reader | None:
        """The reader whose token this is, or None (malformed, unknown, revoked).
        ``refresh=False``: against the accounts as last read (``refresh``), without a
        look at the file (on the data disk) nor a wait for a refresh that runs."""
        match = _TOKEN_RE.fullmatch(token) if isinstance(token, str) else None
        if refresh:
            self.refresh()
        # Not under the lock: a refresh that a hung disk holds holds it. The dict is
        # replaced whole by a refresh, never changed in place.
        reader = self._by_key.get(match[1]) if match else None
        presented = _hash(token) if match else _DUMMY_HASH  # type: ignore[arg-type]
        stored = reader.token_sha256 if reader else _DUMMY_HASH
        if hmac.compare_digest(presented, stored) and reader is not None:
            return reader
        return None

    def current(self, name: str, key_id: str, *, refresh: bool = True) -> Reader | None:
        """The reader ``name`` if it still holds the key ``key_id`` (a panel session
        checks this on every request: removing a reader ends its sessions).
        ``refresh=False``: against the accounts as last read, as ``authenticate``."""
        if refresh:
            self.refresh()
        reader = self._by_key.get(key_id)  # not under the lock: see ``authenticate``
        return reader if reader is not None and reader.name == name else None

    def refresh(self) -> None:
        """Read ``readers.json`` again if it changed (a stat; a hung disk holds it)."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        # Taken before the stat: a change the stat (and the read after it) missed is
        # later still, so it gets file times at least this new, less a clock tick.
        looked = self._clock()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._by_key = None, {}
            return
        # ctime with mtime: an edit that sets the old mtime back (cp -p, rsync -t, a
        # utime) cannot set ctime, which every write and rename moves.
        stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        if stamp != self._stamp:
            self._by_key = {r.key_id: r for r in _load(self.path)}
            self._stamp = stamp if _settled(st, looked) else None

    # -- changing (the CLI; another process may be serving) -----------------------------
    def add(self, name: str, *, root: bool) -> str:
        """Create reader ``name``; returns its token (shown once, never stored)."""
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ReaderError(f"reader name {name!r} is not valid: use 1-64 characters of "
                              f"letters, digits and _ . @ -, starting with a letter or digit")
        key_id = secrets.token_hex(8)
        token = f"ac_{key_id}_{secrets.token_urlsafe(32)}"
        with self._editing() as readers:
            _check_new_name(name, readers)
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            readers.append(Reader(name, root, key_id, _hash(token), created))
        return token

    def remove(self, name: str) -> Reader:
        with self._editing() as readers:
            for i, reader in enumerate(readers):
                if reader.name == name:
                    del readers[i]
                    return reader
        known = ", ".join(r.name for r in readers) or "none"
        raise ReaderError(f"no reader named {name!r} (readers: {known})")

    @contextmanager
    def _editing(self) -> Iterator[list[Reader]]:
        """Read-modify-write under a lock file, so two CLI commands never lose an edit;
        the new file replaces the old one by rename (a reader never sees half a file)."""
        make_dirs(self.data_dir, 0o750)
        fd = os.open(self.data_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            readers = _load(self.path) if self.path.exists() else []
            yield readers
            _save(self.path, readers)
        finally:
            os.close(fd)


def _settled(st: os.stat_result, looked: int) -> bool:
    """Whether a change after ``looked`` must give the file another stamp: its times are
    older than ``looked`` by more than a timestamp tick (``SETTLED_NS``). A file whose
    ctime is ahead of the clock is not settled until the clock passes it by as much."""
    times = [st.st_ctime_ns]
    # An mtime ahead of the clock by more than SETTLED_NS is no write's (the clocks agree
    # within a second) but a utime's: cp -p or rsync -t from a host whose clock is ahead,
    # touch -d. Any later write sets it back to now, another stamp, so it need not
    # settle; the ctime (no utime sets it ahead) dates the change. Counted, it had the
    # file read at every request until that date, for good for one dated years ahead.
    if st.st_mtime_ns <= looked + SETTLED_NS:
        times.append(st.st_mtime_ns)
    return max(times) < looked - SETTLED_NS


def _check_new_name(name: str, readers: list[Reader]) -> None:
    """Refuse a name that is, or could be taken for, an existing reader's. A read is
    recorded under its reader's name, and investigators filter by exact name: with
    ``alice`` and ``Alice`` both readers, ``principal=alice`` missed Alice's reads."""
    folded = _folded(name)
    for reader in readers:
        if reader.name == name:
            raise ReaderError(f"reader {name!r} exists already: `audit-collector users "
                              f"remove {name}` first to give it a new token")
        if _folded(reader.name) == folded:
            raise ReaderError(f"reader name {name!r} would be taken for the existing "
                              f"reader {reader.name!r} (they differ only in case or "
                              f"look-alike characters), and reads are searched by exact "
                              f"name: choose a name of its own (or `audit-collector users "
                              f"remove {reader.name}` first)")


def _folded(name: str) -> str:
    # New names are ASCII (NAME_RE), where this is lowercasing; a hand-edited file may
    # hold others, and NFKC folds their look-alikes (a fullwidth "ａ") onto ASCII.
    return unicodedata.normalize("NFKC", name).casefold()


def _load(path: Path) -> list[Reader]:
    try:
        # A regular file only, of bounded size: a FIFO put in its place held every
        # sign-in and `users` command in its open for good (/dev/zero: memory).
        data: Any = orjson.loads(read_regular(path, MAX_READERS_BYTES))
        if data.get("format") != _FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {_FORMAT}")
        return [Reader(_name(r), _role(r), r["key_id"], r["token_sha256"], r["created"])
                for r in data["readers"]]
    except PermissionError as exc:  # not damaged: another user's
        raise ReaderError(_not_readable(path, exc)) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReaderError(f"{path} cannot be read ({exc}): restore it from a backup, or "
                          f"delete it and add the readers again") from None


def _not_readable(path: Path, exc: PermissionError) -> str:
    """What to do about a readers.json this process may not read. Its owner tells which
    case it is: the collector's own file read by another user (``users list`` by a
    member of its group: run it as the collector's user; a chown would change nothing),
    or a file root's ``users add`` left root's alone (chown it, and the lock file beside
    it, or the next ``users add`` as the collector's user fails on that)."""
    try:
        owner = user_name(path.stat().st_uid)
    except OSError:
        owner = "another user"
    return (f"{path} cannot be read ({exc.strerror}): it is {owner}'s alone (mode 0600). "
            f"Run `users` commands as the collector's user (sudo -u USER audit-collector "
            f"users ...); if that user is not {owner} (a `users add` run as root, say), "
            f"chown it and {_LOCK_FILE} beside it to the collector's user")


def _name(entry: dict[str, Any]) -> str:
    """A stored reader's name: a string only. Any other value loaded as it was, and
    ``users add`` crashed folding it to compare (``users list`` too), and a read by that
    reader was recorded under a principal that is not text."""
    name = entry["name"]
    if type(name) is not str:
        raise ValueError(f"reader name {name!r} is not text: write it as a JSON string")
    return name


def _role(entry: dict[str, Any]) -> bool:
    """Whether a stored reader is root: a JSON boolean only. ``bool()`` made any
    non-empty string root, so a hand-edited ``"root": "false"`` granted it."""
    root = entry["root"]
    if type(root) is not bool:
        raise ValueError(f"reader {entry.get('name')!r} has root {root!r}: use true or false")
    return root


def _save(path: Path, readers: list[Reader]) -> None:
    body = orjson.dumps({"format": _FORMAT, "readers": [
        {"name": r.name, "root": r.root, "key_id": r.key_id,
         "token_sha256": r.token_sha256, "created": r.created} for r in readers]},
        option=orjson.OPT_INDENT_2)
    # Edits are serialised by the lock file (replace_file's one writer). Durable, rename
    # included: after a power loss a `users remove` must not come undone, its token
    # working again; a link planted as the temporary file must not get token hashes.
    replace_file(path, body, 0o600)
