"""Where the collector listens: the unix socket file (private from birth, a stale one
replaced, a live one never stolen) and the TLS context of the TCP listener."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import ssl
import stat
from pathlib import Path
from typing import Final, Literal

from audit_middleware._dirs import make_dirs

log = logging.getLogger("collector")


class IngestError(Exception):
    """The server cannot start as configured (socket in use, bad TLS files, ...)."""


#: What became of the socket's file at the stop (``SocketFile.remove``).
Removal = Literal["removed", "gone", "another's"]

#: A unix socket path must be shorter than this, in bytes: sun_path holds 108 on Linux
#: and 104 on macOS, its terminating NUL included. The smaller, so that a data
#: directory that works here works there too.
UNIX_PATH_LIMIT: Final = 104


#: Flags of the descriptor that pins the socket's file (None where the system has no
#: ``O_PATH``: macOS, where the file is then told by (st_dev, st_ino) alone).
_PIN_FLAGS: Final = (os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC) if hasattr(os, "O_PATH") \
    else None


class SocketFile:
    """The unix socket's file as this collector bound it: its path, and which file it is
    (``st_dev``, ``st_ino``), so that a stop removes that file and no other.

    A collector started during this one's drain (an overlapping restart) finds the file
    with nobody listening (the listener is closed first), replaces it as stale and binds
    its own there: removed by name at this one's stop, the new collector's socket was
    gone and no app could connect to it. The inode number alone does not tell the two
    apart: once the old file is unlinked and nothing holds it, ext4 gives its number to
    the new file at once. So the file is pinned (an ``O_PATH`` descriptor, no access to
    it) from the bind to the stop: while held, its number cannot go to another file."""

    def __init__(self, path: Path, pin: int | None) -> None:
        self.path = path
        self._pin = pin
        st = os.fstat(pin) if pin is not None else os.lstat(path)
        self.dev, self.ino = st.st_dev, st.st_ino

    def remove(self) -> Removal:
        """Removes the file at ``path`` if it still is this one, and lets go of the pin.
        (Between the check and the unlink another file could still take the path: POSIX
        has no unlink-if-this-file; the window is that of two system calls, where it was
        the whole drain.)"""
        try:
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                return "gone"
            if (st.st_dev, st.st_ino) != (self.dev, self.ino):
                return "another's"
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                return "gone"
            return "removed"
        finally:
            self.close()

    def close(self) -> None:
        """Lets go of the pin (``remove`` does): from then on the file's number may be
        given to another file, so the pin goes only once nothing is left to remove."""
        pin, self._pin = self._pin, None
        if pin is not None:
            os.close(pin)


def bind_unix(path: Path) -> tuple[socket.socket, SocketFile]:
    """A listening unix socket at ``path``, mode 0600 from birth, and its file; a stale
    socket file left by a crashed collector is replaced, a live one is an error."""
    raw = os.fsencode(path)
    if len(raw) >= UNIX_PATH_LIMIT:
        raise IngestError(f"unix socket path {path} is {len(raw)} bytes; keep it under "
                          f"{UNIX_PATH_LIMIT} (choose a shorter --socket or --data-dir)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise IngestError(f"{path} exists and is not a socket; move it away or choose "
                              "another --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(os.fspath(path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise IngestError(f"cannot check socket {path}: {exc}") from None
            os.unlink(path)  # stale: nobody listens
        else:
            raise IngestError(f"another collector is already listening on {path}; stop it "
                              "or choose another --socket")
        finally:
            probe.close()
    make_dirs(path.parent, 0o750)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is born 0600: no window for others
    try:
        sock.bind(os.fspath(path))
    except OSError as exc:
        sock.close()
        raise IngestError(f"cannot bind unix socket {path}: {exc}") from None
    finally:
        os.umask(old_umask)
    pin = None
    try:
        # Right after bind: the file is this socket's. Told first, so that a failure
        # below removes this file and no other.
        pin = None if _PIN_FLAGS is None else os.open(path, _PIN_FLAGS)
        socket_file = SocketFile(path, pin)
    except OSError as exc:
        sock.close()
        if pin is not None:
            os.close(pin)
        _remove_just_bound(path)
        raise IngestError(f"cannot set up unix socket {path}: {exc}") from None
    try:
        os.chmod(path, 0o600)
        sock.listen(512)
    except OSError as exc:
        sock.close()
        # Left there, the next start took it for a stale socket and replaced it, but
        # anything that looked meanwhile (an app, a probe) found a collector's socket.
        with contextlib.suppress(OSError):
            socket_file.remove()
        raise IngestError(f"cannot set up unix socket {path}: {exc}") from None
    sock.setblocking(False)
    return sock, socket_file


def _remove_just_bound(path: Path) -> None:
    """The socket file bound a moment ago, removed when it could not be told apart
    (its pin failed): a socket at ``path`` then is that one, within two system calls."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def reload_certificate(context: ssl.SSLContext, cert: Path, key: Path, what: str) -> bool:
    """Load ``cert``/``key`` again into a listener's ``context`` (SIGHUP: a renewed
    certificate without a restart): new handshakes use it, open connections keep theirs.
    A file that cannot be loaded leaves the certificate in use, and is logged."""
    try:
        # Tried on a context of its own first: a pair that fails half way (a key that
        # does not match, a missing key file) left the live context with the new
        # certificate and no usable key, and every new handshake failed.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        log.error("%s: the TLS certificate %s / key %s could not be loaded again (%s); the "
                  "one loaded before stays in use", what, cert, key, exc)
        return False
    log.info("%s: reloaded the TLS certificate %s", what, cert)
    return True


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise IngestError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        hint = (": both must be PEM files (-----BEGIN CERTIFICATE----- and -----BEGIN "
                "PRIVATE KEY-----), the key the certificate's, unencrypted"
                if isinstance(exc, ssl.SSLError) else "")
        raise IngestError(f"cannot load TLS certificate {cert} / key {key}: {exc}{hint}") \
            from None
    return context
