"""A TCP listener whose connections never complete: a connect that hangs, made
deterministically on loopback (no routing, no network namespace, no firewall rule).

Linux drops a SYN while the listener's accept queue is full (``tcp_abort_on_overflow``
off, its default), and the client retransmits it for as long as its timeout allows. A
backlog of 0 still queues one connection: the helper fills the queue with connections
of its own, and never accepts any."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager


@contextmanager
def unaccepting_port() -> Iterator[int]:
    """The port of a 127.0.0.1 listener on which the next connect waits until its
    timeout (checked: the queue is full once a connect of the helper's own times out)."""
    with ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(64):
            probe = stack.enter_context(socket.socket())
            probe.settimeout(0.5)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                break  # this one waited: the queue is full, the next one waits too
        else:
            raise AssertionError("the listener's accept queue never filled up")
        yield port
