"""Events and stores for the storage tests (segments, index, store, query)."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from audit_middleware.event import AuditEvent
from collector.canonical_lines import CanonicalLines
from collector.query import close_readers
from collector.storage import records
from collector.store import StorageSettings, Store

_ids = itertools.count(1)
BASE_NS = 1_795_650_000_000_000_000  # 2026-11-26T00:00:00Z, give or take


def event(n: int | None = None, *, created_ns: int | None = None, **fields: Any) -> dict[str, Any]:
    """A valid event dict (schema order, as the ingest server hands them over)."""
    n = next(_ids) if n is None else n
    base = AuditEvent(
        type=fields.pop("type", "credentials_created"),
        target=fields.pop("target", f"cred-{n}"),
        principal=fields.pop("principal", "user-1"),
        status=fields.pop("status", ""),
        org_id=fields.pop("org_id", "org-1"),
        org_name=fields.pop("org_name", "Acme"),
        workspace_id=fields.pop("workspace_id", "ws-1"),
        workspace_name=fields.pop("workspace_name", "Main"),
        client_ip=fields.pop("client_ip", "203.0.113.7"),
        created_ns=BASE_NS + n * 1_000_000 if created_ns is None else created_ns,
        peer_ip=fields.pop("peer_ip", ""),
    ).to_dict()
    base.update(fields)
    return base


def events(count: int, **fields: Any) -> list[dict[str, Any]]:
    return [event(**fields) for _ in range(count)]


@contextmanager
def open_store(data_dir: Path, **settings: Any) -> Iterator[Store]:
    store = Store(StorageSettings(data_dir=data_dir, **settings))
    store.open()
    try:
        yield store
    finally:
        store.close()
        # What the test read of it through ``collector.query.search`` and the like: that
        # Reader stayed open on the test's thread (pytest's) for the rest of the run.
        close_readers(data_dir)


def descriptors_into(path: Path) -> list[str]:
    """What this process has open under ``path``, from /proc/self/fd (Linux)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return sorted(link for link in links if link.startswith(f"{path.resolve()}/")
                  or link == str(path.resolve()))


def wait_until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``condition`` until it is truthy (for behaviour driven by the store's
    timer thread); fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)


def segment_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "segments").glob("segment-*.jsonl*"))


def record_lines(path: Path) -> list[bytes]:
    """The record lines of a plain segment (header excluded)."""
    return path.read_bytes().splitlines(keepends=True)[1:]


def refuse_to_encode(monkeypatch: pytest.MonkeyPatch, event_id: str) -> None:
    """Make the store's encoder raise for the event ``event_id`` (and for it only): a
    mismatch between what validation accepts and what the store can encode. The ingest
    server's fast path is made to pass that event's line on to the general path (the
    validator, then the encoder), as it does any line not in canonical form."""
    real = records.id_key
    real_read = CanonicalLines.read
    marker = event_id.encode()

    def read(self: CanonicalLines, line: bytes) -> Any:
        return None if marker in line else real_read(self, line)

    monkeypatch.setattr(CanonicalLines, "read", read)

    def id_key(key: str) -> bytes | str:
        if key == event_id:
            raise ValueError("cannot key this id (injected)")
        return real(key)

    monkeypatch.setattr(records, "id_key", id_key)


def loss_acks_rename_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.replace refuses to put the acknowledgements' file (loss-acks.json) in place, and
    that file only (the OS's fault, outside the product): undone by ``monkeypatch.undo``."""
    import errno
    import os

    from collector.storage import loss_acks

    real_replace = os.replace

    def refused(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).name == loss_acks.FILE_NAME:
            raise OSError(errno.EIO, "Input/output error (injected)")
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refused)


def forget_source(store: Store, source: str) -> None:
    """Retention forgets ``source`` (as GroupWriter.forget_sources, then the store)."""
    writer = store._writer
    with writer.lock:
        writer.sources.pop(source)
    store._forget_loss_acks([source])


class Hold:
    """A method (or function) that, while ``armed``, blocks its caller (the commit thread,
    a stats or readers reading) until ``release``: what a hung fsync, stat or statvfs
    does to it. ``entered`` is set once it blocks; ``entries`` counts the callers it
    blocked."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> None:
        self.armed = True
        self.entered = threading.Event()
        self.entries = 0
        self._counting = threading.Lock()
        self._released = threading.Event()
        real = getattr(owner, name)

        def held(obj: object, *args: object) -> object:
            if self.armed:
                with self._counting:
                    self.entries += 1
                self.entered.set()
                self._released.wait()
            return real(obj, *args)

        monkeypatch.setattr(owner, name, held)

    def release(self) -> None:
        self.armed = False
        self._released.set()
