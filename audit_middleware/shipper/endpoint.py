"""Where the collector listens: ``unix:///path/collector.sock`` or ``tcp://host:port``."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import AuditConfigurationError

DEFAULT_URL = "unix://./audit-data/collector.sock"


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
    def loopback(self) -> bool:
        return self.scheme == "unix" or is_loopback(self.host)

    def connect(self, timeout: float, tls: ssl.SSLContext | None,
                track: Callable[[int | None], None] = lambda fd: None) -> socket.socket:
        """A connected (and, for TLS, handshaken) blocking socket; raises OSError.
        ``track`` is told the socket's descriptor as soon as it exists, and None before
        a failed one is closed (see ``Sender.after_fork``)."""
        if self.scheme == "unix":
            return _connected(socket.AF_UNIX, socket.SOCK_STREAM, 0, self.path, timeout, track)
        # socket.create_connection, with the descriptor tracked while it connects.
        failure: OSError | None = None
        for family, kind, proto, _, address in socket.getaddrinfo(
                self.host, self.port, 0, socket.SOCK_STREAM):
            try:
                sock = _connected(family, kind, proto, address, timeout, track)
                break
            except OSError as exc:
                failure = exc
        else:
            raise failure or OSError(f"getaddrinfo gave no address for {self.host}")
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=self.host)  # the same descriptor
        except BaseException:
            track(None)
            sock.close()
            raise
        return sock


def _connected(family: int, kind: int, proto: int, address: Any, timeout: float,
               track: Callable[[int | None], None]) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    track(sock.fileno())
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        track(None)  # before the close: the number may be reused at once
        sock.close()
        raise
    return sock


def parse_url(url: str) -> Endpoint:
    """Parse a collector URL; a relative unix path is resolved against the current
    directory now, so a later ``chdir`` does not move the collector."""
    if not isinstance(url, str):
        raise AuditConfigurationError(f"collector url must be a string, got {url!r}")
    if url.startswith("unix://"):
        path = url[len("unix://"):]
        if not path or path.endswith("/") or "\x00" in path:
            raise AuditConfigurationError(
                f"collector url {url!r} needs the socket file's path, e.g. "
                f"unix:///var/run/audit/collector.sock")
        return Endpoint("unix", path=os.path.abspath(path))
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


def _check_host(url: str, host: str) -> None:
    """A host name the resolver can be asked for: a typo such as ``collector..internal``
    failed only at the first connection, with an error that is not a connection failure
    (UnicodeError from the IDNA codec), and every batch was dropped, not spooled."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        host.encode("idna")
    except UnicodeError as exc:
        raise AuditConfigurationError(
            f"collector url {url!r}: {host!r} is not a valid host name ({exc}); check for "
            f"an empty label (two dots) or a label over 63 characters") from None


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1); a name never resolves here."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
