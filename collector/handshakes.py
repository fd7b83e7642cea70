"""What both TLS listeners (ingest's TCP port, the query API's) do around a handshake
they run themselves: look at a new connection's first bytes before the handshake
(``first_bytes``), count failures by client host so the log shows a misconfigured client
but not every attempt of a scanner (``FailureLog``), and say what a failure usually means
(``handshake_hint``; for a refused certificate, what the client's alert tells:
``certificate_alerts``)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Final

from audit_middleware._counter import worth_saying

#: Client hosts whose failures are counted for the log (then forgotten).
_HOSTS: Final = 1024

#: (OpenSSL reasons, what they usually mean): a listener's own list, for its clients.
Hints = Sequence[tuple[tuple[str, ...], str]]


def certificate_alerts(trust: str) -> Hints:
    """What the client's alert says of why it refused this listener's certificate;
    ``trust``: how its clients are given a CA. An alert names a class of causes, not
    the one (OpenSSL sends bad_certificate for a wrong host name and a certificate not
    valid yet alike), and other TLS libraries choose theirs differently: each hint says
    no more than the alert does. Every one was "give it the CA" before, which changes
    nothing for an expired certificate or a host name it does not hold."""
    return (
        (("ALERT_UNKNOWN_CA",),
         (f"the client does not trust the CA that issued this certificate (or this "
          f"self-signed one): give it {trust}")),
        (("ALERT_CERTIFICATE_EXPIRED",),
         ("the client finds this certificate expired: renew it (SIGHUP loads the new "
          "one), or set the client's clock right if it is ahead")),
        (("ALERT_UNSUPPORTED_CERTIFICATE",),
         ("the client finds this certificate not one for a TLS server (extended key "
          "usage without serverAuth, or a key usage that forbids it): reissue it")),
        (("ALERT_BAD_CERTIFICATE",),
         ("the client refused this certificate, the alert does not say why: often the "
          "name or address it connects to is not in it, or it is not valid yet by the "
          "client's clock; the client's own error says which")),
        (("ALERT_DECRYPT_ERROR",),
         (f"the client could not verify a signature: often this certificate's, not "
          f"signed by the CA it trusts under its issuer's name (a CA made again under "
          f"the same name): give it {trust}, the one that issued this certificate")),
        (("ALERT_CERTIFICATE_UNKNOWN",),
         (f"the client refused this certificate without saying why (some clients send "
          f"this for a CA they do not trust: then give it {trust}); the client's own "
          f"error says which")),
    )


class FailureLog:
    """Failures counted by client host; ``count`` says when one is worth a log line: at
    each host's 1st, 2nd, 4th, 8th... failure, so a misconfigured client shows at once
    and a scanner or a flood does not fill the log. Bounded: past ``_HOSTS`` hosts the
    counts start again (a host logged before is logged again)."""

    def __init__(self) -> None:
        self._failures: dict[str, int] = {}

    def count(self, host: str) -> int | None:
        """This host's failures so far, this one included, if it is to be logged."""
        failures = self._failures
        if host not in failures and len(failures) >= _HOSTS:
            failures.clear()
        n = failures[host] = failures.get(host, 0) + 1
        return n if worth_saying(n) else None


def handshake_hint(exc: BaseException, hints: Hints) -> str:
    """``"; "`` and what a failed TLS handshake's reason usually means, or ``""``."""
    text = f"{getattr(exc, 'reason', '') or ''} {exc}".upper()
    for reasons, hint in hints:
        if any(r in text for r in reasons):
            return f"; {hint}"
    if isinstance(exc, ConnectionAbortedError | TimeoutError):
        return "; the client said nothing in time (handshake_timeout)"
    if type(exc) is ConnectionResetError and not str(exc):
        # asyncio's SSLProtocol raises the bare class at an EOF in the handshake (one
        # before the client's first byte is a probe: see first_bytes)
        return ("; the client closed the connection in the middle of the handshake, "
                "without a TLS alert (it may not trust this collector's certificate, or "
                "gave up waiting)")
    return ""


async def first_bytes(sock: socket.socket, timeout: float, n: int = 1) -> bytes:
    """Up to ``n`` bytes the client of a new connection sends first, left where they are
    for the TLS handshake; ``b""`` if it closes (FIN or reset) before sending any: a TCP
    probe. ``TimeoutError`` if it neither sends nor closes in ``timeout``. ``sock`` must
    be no transport's yet (the loop watches it here).

    Told here, before the handshake: asyncio ends a handshake at any EOF with the same
    bare ``ConnectionResetError``, whether the client said nothing, sent half a hello
    or read the server's hello and went (a client that failed TLS, taken for a probe);
    and a probe closed with a reset (as load balancers' health checks do) was a failure
    with its errno text."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _wake, ready)
        try:
            async with asyncio.timeout_at(end):
                await ready
        except TimeoutError:
            raise TimeoutError(f"the client sent nothing in {timeout:g} s") from None
        finally:
            loop.remove_reader(sock.fileno())
        try:
            return sock.recv(n, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            return b""  # reset before a byte came


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
