"""What a plain-HTTP client refused at the query API's connection limit is told: a
``503`` with ``Retry-After``, in the API's error shape, sent without ever waiting.

Closed without a word, the client saw a connection reset and no reason. The answer is
written once, non-blocking, from the accept loop itself (``ApiServer._admit``): a
freshly accepted socket's send buffer takes a few hundred bytes at once; if it cannot,
the connection is closed as before rather than held (a refused connection's file is
what the limit is there to save).

Over TLS nothing is refused here: a new connection closes an unfinished handshake to
make room (``collector.api.tls``), and answering one refused would cost it a handshake,
the very work the limit refuses.
"""

from __future__ import annotations

import socket
from typing import Final

import orjson

from ..disk_calls import RETRY_AFTER
from .headers import security_headers

#: Bytes of the client's request read (and dropped) before the close: a close with
#: unread bytes is a reset, which may destroy the answer before the client reads it.
_DRAIN: Final = 64 * 1024


def refusal_answer() -> bytes:
    """The whole HTTP response to a refused connection."""
    body = orjson.dumps({
        "error": "unavailable",
        "message": "the collector's query API has too many connections open; retry in "
                   f"{RETRY_AFTER} seconds"})
    head = [b"HTTP/1.1 503 Service Unavailable",
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
            b"Retry-After: %d" % RETRY_AFTER,
            b"Connection: close",
            # Every answer of the API carries them (``collector.api.headers``); over
            # plain HTTP, so no HSTS.
            *(name + b": " + value for name, value in security_headers(False))]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


_ANSWER: Final = refusal_answer()


def refuse(sock: socket.socket) -> None:
    """Answers ``sock`` with the refusal, as far as the kernel takes it at once, and
    closes it."""
    try:
        sock.setblocking(False)
        if sock.send(_ANSWER) == len(_ANSWER):
            _drop_unread(sock)
    except OSError:  # the buffer is full, or the client is gone: nothing to wait for
        pass
    finally:
        sock.close()


def _drop_unread(sock: socket.socket) -> None:
    """Reads what the client has sent so far (its request, usually), without waiting:
    then the close is a FIN after the answer, not a reset."""
    left = _DRAIN
    while left > 0:
        try:
            data = sock.recv(min(left, 16 * 1024))
        except OSError:  # nothing more yet (BlockingIOError), or the client is gone
            return
        if not data:
            return
        left -= len(data)
