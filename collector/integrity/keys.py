"""Ed25519 keys: the collector's signing key, and the key ring of every public key it
ever signed with, so digests signed before a key rotation still verify.

Data directory layout::

    keys/                      0700
        signing-key.pem        0600, PKCS#8 PEM (unless ``signing_key`` points elsewhere)
        ed25519-<key id>.pub   every public key ever used (PEM, SubjectPublicKeyInfo)

A key id is the first 16 hex digits of the SHA-256 of the raw 32-byte public key. A
file of trusted public keys (``verify --public-key FILE``, made by ``keys export``) is
one or more PEM ``PUBLIC KEY`` blocks; text around them is ignored.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from audit_middleware._dirs import make_dirs
from collector.storage.in_the_way import InTheWayError, refuse_other_than_a_dir, restore_then
from collector.storage.regular_files import (
    FileTooLargeError,
    NotRegularFileError,
    fsync_dir,
    read_regular,
    replace_file,
    write_new_file,
)

from .errors import KeyFileError

log = logging.getLogger("collector.integrity")

KEYS_DIR: Final = "keys"
SIGNING_KEY_FILE: Final = "signing-key.pem"
KEYS_DIR_MODE: Final = 0o700
PRIVATE_MODE: Final = 0o600
PUBLIC_MODE: Final = 0o644
#: What keys/ is, and what to do once something else there is out of the way.
_KEYS: Final = ("the keys/ directory (the key ring: the public keys and, by default, the "
                "signing key)")
_KEYS_THEN: Final = restore_then("keys/", "run this again (a store with digests starts "
                                 "only with the key that signed them: docs/integrity.md)")
# An export of every key a store ever had is a few KiB; a file far larger is no key file.
MAX_PUBLIC_KEYS_BYTES: Final = 1024 * 1024
_PUBLIC_NAME = re.compile(r"ed25519-([0-9a-f]{16})\.pub")
_PEM_BLOCK = re.compile(
    rb"-----BEGIN PUBLIC KEY-----\r?\n[A-Za-z0-9+/=\r\n]+-----END PUBLIC KEY-----")


@dataclass(frozen=True)
class PublicKey:
    key: Ed25519PublicKey

    @property
    def raw(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.Raw,
                                     serialization.PublicFormat.Raw)

    @property
    def id(self) -> str:
        return key_id(self.raw)

    @property
    def b64(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")

    def pem(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo)

    def verifies(self, signature: bytes, message: bytes) -> bool:
        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_b64(cls, text: object) -> PublicKey:
        """A public key from its base64 raw form (as a key-rotation digest names it)."""
        try:
            raw = base64.b64decode(str(text), validate=True)
            return cls(Ed25519PublicKey.from_public_bytes(raw))
        except (ValueError, TypeError):
            raise KeyFileError(f"{str(text)[:60]!r} is not a base64 Ed25519 public key") from None


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    path: Path

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.private.public_key())

    @property
    def id(self) -> str:
        return self.public.id

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


def key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def default_signing_key_path(data_dir: Path) -> Path:
    return data_dir / KEYS_DIR / SIGNING_KEY_FILE


# -- the signing key --------------------------------------------------------------------
def load_signing_key(path: Path) -> SigningKey:
    try:
        # A regular file only: a FIFO in its place held serve's start (and `keys rotate`)
        # for good, deaf to SIGTERM, waiting in its open for a writer.
        data = read_regular(path, MAX_PUBLIC_KEYS_BYTES)
    except (NotRegularFileError, FileTooLargeError) as exc:  # not the owner's to fix
        raise KeyFileError(f"the signing key {path} is {exc.strerror}: point signing_key "
                           f"at the key file the collector generated (or move this away "
                           f"to have a new key made)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read the signing key {path}: {exc.strerror or exc}: "
                           f"check the signing_key option and the file's owner") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(
            f"{path} is not an unencrypted PEM private key: point signing_key at the key "
            f"the collector generated (or move this file away to have a new key made)"
        ) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(private).__name__}, not an Ed25519 key: "
                           f"digests are signed with Ed25519 only")
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        log.warning("signing key %s is readable by others (mode %o): chmod 600 it", path, mode)
    return SigningKey(private, path)


def write_signing_key(path: Path, private: Ed25519PrivateKey, *, replace: bool) -> None:
    """Write ``private`` to ``path`` (0600) through a temporary file, fsynced; with
    ``replace`` an existing key is atomically replaced (key rotation)."""
    tmp = prepare_signing_key(path, private)
    if not replace and path.exists():
        tmp.unlink()
        raise KeyFileError(f"{path} appeared while a new key was being written: "
                           f"another process is creating keys; start one collector only")
    install_signing_key(tmp, path)


def prepare_signing_key(path: Path, private: Ed25519PrivateKey) -> Path:
    """``private`` in a fsynced temporary file beside ``path`` (0600), to be put in place
    by ``install_signing_key``: a rotation records the new key only once it is on disk."""
    pem = private.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    tmp = path.with_name(path.name + ".tmp")
    write_new_file(tmp, pem, PRIVATE_MODE)
    return tmp


def retired_keys_path(signing_key: Path) -> Path:
    """The public keys the signing key at ``signing_key`` replaced, kept beside it: in
    the signing key's custody, not in the data directory's key ring, which whoever
    writes the data directory can add a key of their own to."""
    return signing_key.with_name(signing_key.name + ".retired.pub")


def read_retired_keys(signing_key: Path) -> list[PublicKey]:
    path = retired_keys_path(signing_key)
    if not path.exists():
        return []
    keys, problem = _read_key_file(path)
    if problem is not None:
        # Not read_public_keys's advice (make a file with `keys export`): the export reads
        # this list, and fails on it too; it is kept with the signing key, not made.
        raise KeyFileError(
            f"{path} cannot be used ({problem}): it is the list `keys rotate` keeps of the "
            f"public keys this signing key replaced; make it readable by the collector's "
            f"user, or put it back from a backup of the signing key")
    return keys


@contextmanager
def retiring(signing_key: Path, key: PublicKey) -> Iterator[None]:
    """``key`` (about to be replaced) added to the retired keys beside ``signing_key``
    while the block records its rotation; the list put back as it was if the block
    fails: a rotation that was not recorded retires nothing, and a list naming the
    signing key says it was rotated away from."""
    path = retired_keys_path(signing_key)
    kept = read_retired_keys(signing_key)
    if key.id in {k.id for k in kept}:
        yield
        return
    # The list as it was, under a second name, to be put back by a rename: the block
    # fails most likely on a full disk, where writing the list again would fail too.
    before = path.with_name(f".{path.name}.before")
    before.unlink(missing_ok=True)
    if kept:
        _keep_as_it_is(path, before)
    replace_file(path, export_pem([*kept, key], None).encode("ascii"), PRIVATE_MODE)
    try:
        yield
    except BaseException as exc:
        _put_back(path, before if kept else None, key, exc)
        raise
    before.unlink(missing_ok=True)


def _keep_as_it_is(path: Path, before: Path) -> None:
    """``path``'s file also under the name ``before``: a hard link (it takes no room), or
    a copy where the file system has none (vfat, some network and FUSE mounts): without
    it, every rotation after the first failed there. A copy that meets a full disk
    fails here, before anything was changed."""
    try:
        os.link(path, before)
    except OSError:
        write_new_file(before, read_regular(path, MAX_PUBLIC_KEYS_BYTES), PRIVATE_MODE)


def _put_back(path: Path, before: Path | None, key: PublicKey, why: BaseException) -> None:
    """``path`` as it was before ``retiring`` listed ``key`` (``before``: the list then;
    ``None``: there was none)."""
    try:
        if before is not None:
            os.replace(before, path)
        else:
            path.unlink(missing_ok=True)
        fsync_dir(path.parent)
    except OSError as exc:
        raise KeyFileError(
            f"the key rotation failed ({why}), and {path} could not be put back as it was "
            f"({exc.strerror or exc}): it lists key {key.id}, the signing key, as retired, "
            f"which no rotation did. "
            + (f"Move {before} to {path}" if before is not None else f"Remove {path}"))\
            from exc


def install_signing_key(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fsync_dir(path.parent)


def ensure_signing_key(path: Path) -> tuple[SigningKey, bool]:
    """The signing key at ``path``, generated (0600) if there is none yet; and whether
    it was generated now."""
    if path.exists():
        return load_signing_key(path), False
    if not path.parent.is_dir():
        raise KeyFileError(f"cannot create the signing key {path}: directory "
                           f"{path.parent} does not exist")
    private = Ed25519PrivateKey.generate()
    try:
        write_signing_key(path, private, replace=False)
    except OSError as exc:
        raise KeyFileError(f"cannot create the signing key {path}: {exc.strerror or exc}") \
            from None
    log.info("generated a new Ed25519 signing key %s (id %s)", path,
             SigningKey(private, path).id)
    return SigningKey(private, path), True


# -- the key ring -----------------------------------------------------------------------
class KeyRing:
    """The public keys kept in ``<data_dir>/keys``: every key that ever signed a digest."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def create(self) -> None:
        self.refuse_other_than_a_directory()
        make_dirs(self.directory, KEYS_DIR_MODE)

    def refuse_other_than_a_directory(self) -> None:
        """``KeyFileError`` when something other than a directory has the ring's name:
        serve said only "[Errno 17] File exists", and `keys list` that the directory was
        open to others, then that it held no keys (is --data-dir right?)."""
        # The check of the store's other directories, a link to nothing included (it
        # was "no signing key", "no public keys" or "File exists"), in their words.
        try:
            refuse_other_than_a_dir(self.directory, _KEYS, _KEYS_THEN)
        except InTheWayError as exc:
            raise KeyFileError(str(exc)) from None

    def loose_mode(self) -> str | None:
        """What others may do to the key directory when its mode lets them (it is made
        ``KEYS_DIR_MODE``, but an existing one is taken as it is: restored from a backup or
        copied by hand, it came back 0755 and nothing said so, as nothing would for the
        signing key's own file); None when it is the owner's alone, or not there."""
        try:
            st_mode = os.stat(self.directory).st_mode
        except OSError:
            return None  # no ring yet, or not this user's to look at: said where it matters
        mode = st_mode & 0o777
        if not mode & 0o077 or not stat.S_ISDIR(st_mode):  # (no directory: read says so)
            return None
        what = ("others can add, replace or remove keys in it (a key of theirs in the key "
                "ring; the signing key, where it lives there)" if mode & 0o022 else
                "others can list it, and read what in it their own mode lets them")
        return (f"the key directory {self.directory} is open to others (mode {mode:o}; the "
                f"collector makes it {KEYS_DIR_MODE:o}): {what}: "
                f"chmod {KEYS_DIR_MODE:o} {self.directory}")

    def keys(self) -> dict[str, PublicKey]:
        """The keys of the ring; a file of it that holds none is left out, said in the
        log (``read`` says it to the caller instead)."""
        found, skipped = self.read()
        for problem in skipped:
            log.warning("integrity: %s", problem)
        return found

    def read(self) -> tuple[dict[str, PublicKey], list[str]]:
        """The keys of the ring, and for each file of it that holds no public key (or
        that this user may not read) what is wrong with it and what to do. Such a file is left out, not an error: the ring
        is in the data directory, and a file anyone put there stopped verify with no
        verdict, and the collector's start."""
        found: dict[str, PublicKey] = {}
        skipped: list[str] = []
        self.refuse_other_than_a_directory()
        if not self.directory.is_dir():
            return found, skipped
        for path in sorted(self.directory.iterdir()):
            if not _PUBLIC_NAME.fullmatch(path.name):
                continue
            try:
                keys, problem = _read_key_file(path, denied=True)
            except PermissionError as exc:
                skipped.append(self._unreadable(path, exc))
                continue
            if problem is not None:
                skipped.append(
                    f"{path} is not a public key ({problem}): left out of the key ring. "
                    f"The collector writes one PEM public key to each such file: move it "
                    f"out of {self.directory} (mv {path} SOMEWHERE_ELSE); if it held a key "
                    f"of this store, the collector's next start writes it again (the "
                    f"signing key's and those it replaced), or put it back from a backup")
            for key in keys:
                found[key.id] = key
        return found, skipped

    def _unreadable(self, path: Path, exc: PermissionError) -> str:
        # Not junk to move away (the advice for a file holding no key): the collector's
        # own key, perhaps, kept from this user by its mode or owner, as keys/ itself is
        # from the data directory's group (verify.py says so for the directory).
        return (f"{path} cannot be read by this user ({exc.strerror or exc}): left out of "
                f"the key ring. Run this as the collector's user or a member of its group "
                f"if the file's mode lets the group read it (`ls -l {path}` shows whose it "
                f"is; the collector writes its public keys {PUBLIC_MODE:04o}), or give verify "
                f"the public keys with --public-key FILE (`audit-collector keys export`, "
                f"run as the collector's user)")

    def add(self, key: PublicKey) -> Path:
        path = self.directory / f"ed25519-{key.id}.pub"
        # Written again over a file of that name that does not hold the key (junk: left
        # out of the ring, and the key with it).
        if key.id not in {k.id for k in _read_key_file(path)[0]}:
            try:
                replace_file(path, key.pem(), PUBLIC_MODE)
            except OSError as exc:
                raise KeyFileError(
                    f"cannot write the public key {key.id} to {path} ({exc.strerror or exc}): "
                    + (f"mv {path} SOMEWHERE_ELSE (it holds no public key), then start "
                       f"again" if _in_the_way(path) else
                       f"check that {self.directory} is writable and has room")) from None
        return path


def _in_the_way(path: Path) -> bool:
    """Whether ``path`` is something a file cannot be renamed over (a directory)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def read_public_keys(path: Path) -> list[PublicKey]:
    """Every PEM public key in ``path`` (an export, a key ring file, a single key)."""
    try:
        data = read_regular(path, MAX_PUBLIC_KEYS_BYTES)
    except OSError as exc:
        raise KeyFileError(f"cannot read public keys from {path}: {exc.strerror or exc}") \
            from None
    return parse_public_keys(data, str(path))


def parse_public_keys(data: bytes, where: str) -> list[PublicKey]:
    keys, problem = _public_keys_in(data)
    if problem is not None:
        raise KeyFileError(f"{where}: {problem}: make a file of the collector's public "
                           f"keys with `audit-collector keys export`")
    return keys


def _read_key_file(path: Path, *, denied: bool = False) -> tuple[list[PublicKey], str | None]:
    """The keys in ``path``, or none and why. ``denied``: a PermissionError is raised,
    not told as what is wrong with the file (the file may be fine: the reader is not)."""
    try:
        data = read_regular(path, MAX_PUBLIC_KEYS_BYTES)
    except OSError as exc:
        if denied and isinstance(exc, PermissionError):
            raise
        return [], str(exc.strerror or exc)
    return _public_keys_in(data)


def _public_keys_in(data: bytes) -> tuple[list[PublicKey], str | None]:
    """The PEM public keys in ``data``; or none, and what is wrong with it."""
    keys = []
    for block in _PEM_BLOCK.findall(data):
        try:
            key = serialization.load_pem_public_key(block)
        except (ValueError, UnsupportedAlgorithm):
            return [], "a PUBLIC KEY block in it cannot be read"
        if not isinstance(key, Ed25519PublicKey):
            return [], f"it holds a {type(key).__name__}, not an Ed25519 public key"
        keys.append(PublicKey(key))
    if not keys:
        return [], "it holds no PEM public key: no -----BEGIN PUBLIC KEY----- block"
    return keys, None


def export_pem(keys: list[PublicKey], current: str | None) -> str:
    """A file of public keys with a comment line before each (ids; the current one)."""
    parts = []
    for key in keys:
        mark = " (current signing key)" if key.id == current else ""
        parts.append(f"# audit-collector Ed25519 public key {key.id}{mark}\n"
                     + key.pem().decode("ascii"))
    return "".join(parts)
