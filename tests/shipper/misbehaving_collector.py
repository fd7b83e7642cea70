"""A peer that speaks the wire protocol's hello and then answers batches the way a faulty
or hostile collector might (a test double for the network fault, not for the product:
the real collector never trickles a reply, so its misbehaviour is played here).

``reply(conn, batch)`` decides what each batch gets; ``acknowledge`` answers like the
real collector."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

import orjson

from audit_middleware.wire import (
    HEADER_SIZE,
    Batch,
    FrameType,
    Hello,
    Result,
    Welcome,
    decode_batch,
    parse_header,
)

Reply = Callable[[socket.socket, Batch], None]


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        k = conn.recv(n - len(buf))
        if not k:
            raise ConnectionError("eof")
        buf += k
    return buf


def _read_frame(conn: socket.socket) -> tuple[FrameType, bytes]:
    kind, length = parse_header(_recv_exactly(conn, HEADER_SIZE), 64 << 20)
    return kind, _recv_exactly(conn, length)


def acknowledge(conn: socket.socket, batch: Batch) -> None:
    ids = [orjson.loads(line)["id"] for line in batch.lines]
    conn.sendall(Result(batch.batch_id, ids).encode())


class MisbehavingCollector:
    def __init__(self, path: str, reply: Reply = acknowledge, *,
                 max_frame: int = 4 << 20) -> None:
        self.path = path
        self.reply = reply
        self.max_frame = max_frame
        self.batches: list[Batch] = []
        self.stop = threading.Event()
        if os.path.exists(path):
            os.unlink(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(16)
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            _, payload = _read_frame(conn)
            Hello.decode(payload)
            conn.sendall(Welcome(1, self.max_frame, 300.0).encode())
            while not self.stop.is_set():
                _, payload = _read_frame(conn)
                batch = decode_batch(payload)
                self.batches.append(batch)
                self.reply(conn, batch)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self._sock.close()
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass
