"""Where the collector listens: ``unix:///path/collector.sock`` (or ``unix:/path/...`` and
``unix:relative/path``, as the collector's ready line writes it) or ``tcp://host:port``."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from .._counter import worth_saying
from ..errors import AuditConfigurationError

log = logging.getLogger("audit_middleware")

DEFAULT_URL = "unix://./audit-data/collector.sock"
_POLL: Final = 0.05  # seconds between looks at the exit deadline while a lookup runs
#: How long a new lookup is waited for when the resolver answered before: a healthy one
#: answers within it, and one that does not is not worth a whole connect_timeout while
#: its last answer can be used (the lookup goes on and refreshes it).
_FRESH_WAIT: Final = 0.25

AddressInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]
Deadline = Callable[[], float | None]


@dataclass(frozen=True)
class Endpoint:
    scheme: Literal["unix", "tcp"]
    path: str = ""  # unix: absolute
    host: str = ""  # tcp
    port: int = 0

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    @property
    def identity(self) -> str:
        """This collector's URL, one spelling for every URL that names it: what tells
        one collector from another (the spool's file tags). ``str()`` keeps the URL's
        spelling, so the same collector spelled two ways (a host name's case, which DNS
        ignores; a trailing dot; ``[0:0::1]`` and ``[::1]``) was two, and batches one
        process spooled were left unreplayed by the next. A unix path is absolute
        already (``parse_url``); symbolic links in it are not resolved: what they point
        to may not exist yet, or change."""
        if self.scheme == "unix":
            return str(self)
        if _is_address(self.host):  # its hex digits lowercased, not its %scope (a name)
            host = ipaddress.ip_address(self.host).compressed
        else:
            host = self.host.lower().rstrip(".") or self.host
        return str(replace(self, host=host))

    @property
    def loopback(self) -> bool:
        return self.scheme == "unix" or is_loopback(self.host)

    def connect(self, timeout: float, tls: ssl.SSLContext | None,
                track: Callable[[int | None], None] = lambda fd: None,
                deadline: Deadline = lambda: None) -> socket.socket:
        """A connected (and, for TLS, handshaken) blocking socket; raises OSError.
        ``track`` is told the socket's descriptor as soon as it exists, and None before
        a failed one is closed (see ``Sender.after_fork``). Resolving the host name, each
        connection attempt and the TLS handshake take at most ``timeout`` seconds each,
        and end at ``deadline()`` (the sink's exit deadline, which may be set meanwhile:
        it is looked at again while each of them waits)."""
        if self.scheme == "unix":
            return _connected(socket.AF_UNIX, socket.SOCK_STREAM, 0, self.path, timeout, track,
                              deadline)
        # socket.create_connection, with the descriptor tracked while it connects and
        # the host name resolved within the timeout (see resolve).
        failure: OSError | None = None
        for family, kind, proto, _, address in resolve(self.host, self.port, timeout,
                                                       deadline):
            try:
                sock = _connected(family, kind, proto, address,
                                  _time_left(timeout, deadline), track, deadline)
                break
            except OSError as exc:
                failure = exc
        else:
            raise failure or OSError(f"getaddrinfo gave no address for {self.host}")
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=self.host,  # the same descriptor
                                       do_handshake_on_connect=False)
                _handshake(sock, timeout, deadline)
        except BaseException:
            track(None)
            sock.close()
            raise
        return sock


def verifying_context(cafile: str | None = None) -> ssl.SSLContext:
    """``ssl.create_default_context(cafile=...)`` verifying alike on every Python. 3.13
    turned on two flags: strict RFC 5280 checks, which refuse what OpenSSL 3's own
    ``openssl x509 -req`` and ``req -x509`` make (no authority key identifier, a CA
    without key usage), so a working deployment stopped shipping when its Python was
    upgraded: off. And partial chains, which let ``cafile`` be the collector's own
    CA-issued certificate, refused before 3.13: on (it trusts only what it is given)."""
    context = ssl.create_default_context(cafile=cafile)
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _time_left(timeout: float, deadline: Deadline) -> float:
    """``timeout``, or less when the deadline comes first; TimeoutError once it passed."""
    until = deadline()
    if until is None:
        return timeout
    left = until - time.monotonic()
    if left <= 0:
        raise TimeoutError("shutting down: no time left to reach the collector")
    return min(timeout, left)


class _Lookup:
    """One ``getaddrinfo`` call in a daemon thread of its own: a resolver that does not
    answer holds that thread, never the caller, who waits as long as it may."""

    def __init__(self, host: str, port: int) -> None:
        self.key = (host, port)
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.done = threading.Event()
        self.answer: Sequence[AddressInfo] = ()
        self.error: Exception | None = None
        self.stale_said = False  # a fall back on the last answer was logged
        threading.Thread(target=self._run, name=f"audit-resolve:{host}",
                         daemon=True).start()  # RuntimeError: no new thread now

    def _run(self) -> None:
        host, port = self.key
        try:
            self.answer = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except Exception as exc:  # noqa: BLE001 - handed to whoever waits for it
            self.error = exc
        with _lock:
            if _lookups.get(self.key) is self:
                del _lookups[self.key]  # the next connection asks the resolver again
            if self.error is None and self.answer:
                _answers[self.key] = self.answer
        self.done.set()

    def wait(self, timeout: float, deadline: Deadline) -> bool:
        """True once answered (or failed) within ``timeout`` and before ``deadline()``,
        which is looked at again as the wait goes on (it is set when the sink closes)."""
        until = time.monotonic() + timeout
        while True:
            end = until
            exit_deadline = deadline()
            if exit_deadline is not None:
                end = min(end, exit_deadline)
            left = end - time.monotonic()
            if left <= 0:
                return self.done.is_set()
            if self.done.wait(min(left, _POLL)):
                return True


#: The lookup under way for each (host, port): a resolver that hangs holds one thread,
#: which every connection attempt meanwhile waits for, not one more per attempt.
_lookups: dict[tuple[str, int], _Lookup] = {}
#: The last answer the resolver gave for each (host, port).
_answers: dict[tuple[str, int], Sequence[AddressInfo]] = {}
_lock = threading.Lock()
_pid = os.getpid()  # the process _lock and _lookups belong to
#: Taken only by a process that finds itself forked without the at-fork hook (see
#: ``_check_fork``), never by the one it was forked from: free at any fork.
_fork_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _lock, _pid
    _lock = threading.Lock()  # another thread may have held it at the fork
    _lookups.clear()  # their threads are the parent's
    _pid = os.getpid()


os.register_at_fork(after_in_child=_reset_after_fork)


def _check_fork() -> None:
    """In a child forked without the at-fork hook (uWSGI, ``batching.forks_without_hooks``):
    what the hook would have done. A thread of the parent may have held ``_lock`` at the
    fork (starting a lookup's thread, storing an answer): the child's first lookup
    waited for it forever, no thread of its own ever releasing it."""
    if _pid != os.getpid():
        with _fork_lock:
            if _pid != os.getpid():
                _reset_after_fork()


def resolve(host: str, port: int, timeout: float,
            deadline: Deadline = lambda: None) -> Sequence[AddressInfo]:
    """``socket.getaddrinfo`` for a stream socket to ``host``, within ``timeout``
    seconds and before ``deadline()``. It has no timeout of its own: a resolver that
    does not answer held the sink's worker for as long as it liked, past
    ``connect_timeout`` and the exit deadline (a lifespan drain or ``atexit`` hung).
    The lookup runs in a daemon thread, shared by the attempts made while it runs; one
    not answered in time is left to finish (its answer is kept for the next attempt)
    and the attempt fails with TimeoutError, an OSError: a failed connection (the batch
    is spooled and retried). Then, or when no thread can be started (at interpreter
    shutdown, Python 3.12), the resolver's last answer for that host is used if there
    is one; with none and no thread, the resolver is asked here, as before.
    With a last answer to fall back on, a lookup is not waited for the whole timeout:
    each reconnect during a resolver outage cost that much (batches waited, a
    fail_closed request was answered 503 while the collector was reachable). One still
    under way from an earlier attempt is not waited for at all, a new one at most
    ``_FRESH_WAIT``; either is left to refresh the answer for the attempts after. A
    lookup that fails for now (``EAI_AGAIN``, ``EAI_FAIL``) falls back on the last
    answer too; one that says the name is gone does not."""
    if _is_address(host):  # nothing to ask a resolver, nothing to wait for
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0,
                                  socket.AI_NUMERICHOST)
    key = (host, port)
    _check_fork()
    with _lock:
        lookup = _lookups.get(key)
        under_way = lookup is not None and lookup.pid == os.getpid()
        if not under_way:  # none, or one of the parent's (a fork without the hook)
            try:
                lookup = _lookups[key] = _Lookup(host, port)
            except RuntimeError:  # "can't create new thread at interpreter shutdown"
                lookup = None
        known = _answers.get(key)
    if lookup is None:
        return known or socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    wait = timeout if not known else 0.0 if under_way else min(timeout, _FRESH_WAIT)
    if not lookup.wait(_time_left(wait, deadline), deadline):
        if known:
            if not lookup.stale_said:  # once for a resolver that hangs, not each attempt
                lookup.stale_said = True
                log.warning("audit: resolving %s did not finish within %.1fs; using the "
                            "addresses it last resolved to while it goes on", host,
                            time.monotonic() - lookup.started)
            return known
        raise TimeoutError(f"resolving {host} did not finish within {timeout:.1f}s "
                           f"(the resolver does not answer)")
    if lookup.error is not None:
        if known and _temporary(lookup.error):
            # A resolver that answers "try again" (its servers unreachable, SERVFAIL)
            # is an outage like one that hangs: the collector's address has not
            # changed for it (RFC 8767 serves stale answers alike). A name that no
            # longer exists (EAI_NONAME) is not an outage: raised.
            _said_stale(host, lookup.error)
            return known
        raise lookup.error
    return lookup.answer


#: getaddrinfo's errors that say the resolver could not answer now, not that the name
#: has no address.
_TEMPORARY: Final = frozenset({socket.EAI_AGAIN, socket.EAI_FAIL})
_stale_errors = 0  # lookups that failed and fell back on the last answer


def _temporary(error: Exception) -> bool:
    return isinstance(error, socket.gaierror) and error.errno in _TEMPORARY


def _said_stale(host: str, error: Exception) -> None:
    """Logged at the 1st, 2nd, 4th, 8th... such fall back: each reconnect during the
    outage makes one."""
    global _stale_errors
    _stale_errors += 1
    if worth_saying(_stale_errors):
        log.warning("audit: resolving %s failed (%s); using the addresses it last "
                    "resolved to (%d such lookup(s) so far)", host, error, _stale_errors)


def _connected(family: int, kind: int, proto: int, address: Any, timeout: float,
               track: Callable[[int | None], None], deadline: Deadline) -> socket.socket:
    """A socket connected to ``address`` within ``timeout`` and before ``deadline()``,
    its timeout set to ``timeout`` (for the TLS handshake and the hello after)."""
    sock = socket.socket(family, kind, proto)
    track(sock.fileno())
    try:
        _connect(sock, address, timeout, deadline)
        sock.settimeout(timeout)
    except BaseException:
        track(None)  # before the close: the number may be reused at once
        sock.close()
        raise
    return sock


def _connect(sock: socket.socket, address: Any, timeout: float, deadline: Deadline) -> None:
    """``sock.connect(address)``, the exit deadline looked at again while it waits: the
    socket's own timeout is fixed when the connect begins, so close() or a lifespan
    drain starting while a connect waited (a collector host that drops SYNs, a full
    accept queue) overran its deadline by up to ``connect_timeout``."""
    sock.setblocking(False)
    error = sock.connect_ex(address)
    if error in (errno.EINPROGRESS, errno.EINTR):  # EINTR: the connect goes on all the same
        _wait_for(sock, select.POLLOUT, time.monotonic() + timeout, deadline,
                  f"connecting timed out after {timeout:.1f}s")
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))  # its subclass: ConnectionRefusedError...


def _handshake(sock: ssl.SSLSocket, timeout: float, deadline: Deadline) -> None:
    """The TLS handshake within ``timeout``, ending at the exit deadline as ``_connect``
    does: a peer that takes the connection but never answers the ClientHello (a stalled
    collector, a port that is not the collector's) held the worker past it too."""
    sock.setblocking(False)
    until = time.monotonic() + timeout
    while True:
        try:
            sock.do_handshake()
            break
        except ssl.SSLWantReadError:
            events = select.POLLIN
        except ssl.SSLWantWriteError:
            events = select.POLLOUT
        _wait_for(sock, events, until, deadline,
                  f"the TLS handshake timed out after {timeout:.1f}s")
    sock.settimeout(timeout)


def _wait_for(sock: socket.socket, events: int, until: float, deadline: Deadline,
              timed_out: str) -> None:
    """Until ``sock`` is ready for ``events`` (or failed): TimeoutError at ``until``, or
    at ``deadline()``, looked at again every ``_POLL`` seconds (close or drain sets it
    while a connection is being made). Both are looked at before each poll, not only
    after one that timed out: the handshake calls this once per read, and a peer that
    sends a byte at a time (more often than ``_POLL``) never let a poll time out."""
    poller = select.poll()  # not select(): it refuses a descriptor above 1023
    poller.register(sock, events)
    while True:
        now = time.monotonic()
        if now >= until:
            raise TimeoutError(timed_out)
        exit_deadline = deadline()
        if exit_deadline is not None and now >= exit_deadline:
            raise TimeoutError("shutting down: no time left to reach the collector")
        if poller.poll(min(_POLL, until - now) * 1000):
            return


def parse_url(url: str) -> Endpoint:
    """Parse a collector URL; a relative unix path is resolved against the current
    directory now, so a later ``chdir`` does not move the collector."""
    if not isinstance(url, str):
        raise AuditConfigurationError(f"collector url must be a string, got {url!r}")
    if url.startswith("unix:"):
        # unix:/path and unix:relative/path too, as the collector's ready line (and
        # gunicorn's --bind) write it: its default data directory is a relative one.
        path = url[len("unix://"):] if url.startswith("unix://") else url[len("unix:"):]
        if not path or path.endswith("/") or "\x00" in path:
            raise AuditConfigurationError(
                f"collector url {url!r} needs the socket file's path, e.g. "
                f"unix:///var/run/audit/collector.sock")
        return Endpoint("unix", path=_absolute(path))
    if url.startswith("tcp://"):
        rest = url[len("tcp://"):].rstrip("/")
        host, sep, port_text = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        # Plain ASCII digits only: int() also takes ' 7100', '+7100', '7_100', '٧١٠٠'.
        port = int(port_text) if port_text.isascii() and port_text.isdigit() else -1
        if not sep or not host or not 0 < port < 65536:
            raise AuditConfigurationError(
                f"collector url {url!r} needs a host and a port, e.g. tcp://collector:7100")
        _check_host(url, host)
        return Endpoint("tcp", host=host, port=port)
    raise AuditConfigurationError(
        f"collector url {url!r} is not supported: use unix:///path/to/collector.sock or "
        f"tcp://host:port")


def _absolute(path: str) -> str:
    """``path`` made absolute, one spelling for one socket: ``abspath`` keeps a leading
    ``//`` (POSIX leaves its meaning to the system; Linux reads it as ``/``), and the
    endpoint's identity, which tags the spool's files, would differ from ``/``'s."""
    path = os.path.abspath(path)
    return "/" + path.lstrip("/") if path.startswith("//") else path


def _check_host(url: str, host: str) -> None:
    """A host name the resolver can be asked for: a typo such as ``collector..internal``
    failed only at the first connection, with an error that is not a connection failure
    (UnicodeError from the IDNA codec), and every batch was dropped, not spooled."""
    if _is_address(host):
        return
    try:
        host.encode("idna")
    except UnicodeError as exc:
        raise AuditConfigurationError(
            f"collector url {url!r}: {host!r} is not a valid host name ({exc}); check for "
            f"an empty label (two dots) or a label over 63 characters") from None
    # Else a typo such as 'user@host', 'host name' or an unclosed '[::1' was taken, and
    # failed only at the first connection (or, '[::1', was called not on loopback).
    if _NOT_IN_HOST_NAMES.search(host):
        raise AuditConfigurationError(
            f"collector url {url!r}: {host!r} is neither an IP address (write an IPv6 one "
            f"in brackets: tcp://[::1]:7100) nor a host name (letters, digits, '-', '_' and "
            f"'.'; no user@, path or spaces)")


#: What no host name holds (IDNA takes non-ASCII letters; '_' occurs in DNS names).
_NOT_IN_HOST_NAMES: Final = re.compile(r"[\x00-\x2c/:;<=>?@\[\\\]^`{|}~\x7f]")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """``localhost`` (in any case: a host name is not case-sensitive, nor is /etc/hosts)
    or a loopback address (127.0.0.0/8, ::1); a name never resolves here. Not
    ``localhost.``: glibc's /etc/hosts lookup does not match the trailing dot, so that
    name is asked of DNS, whose answer (any address) would get the token and the events
    in clear."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
