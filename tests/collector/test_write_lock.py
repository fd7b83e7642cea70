"""The index's write lock: the store's commit thread goes before background work
(index builds), which never takes the lock while the store waits for it."""

from __future__ import annotations

import threading
import time

import pytest

from collector.storage.write_lock import WriteLock
from tests.collector.storage_helpers import wait_until


def test_the_store_goes_before_background_work_that_waits_longer() -> None:
    lock = WriteLock()
    order: list[str] = []
    first_in, first_out = threading.Event(), threading.Event()

    def first_build() -> None:
        with lock.background():
            order.append("build 1")
            first_in.set()
            first_out.wait(10)

    def second_build() -> None:
        with lock.background():
            order.append("build 2")

    def store() -> None:
        lock.acquire()
        order.append("store")
        lock.release()

    threads = [threading.Thread(target=first_build)]
    threads[0].start()
    assert first_in.wait(10)
    threads.append(threading.Thread(target=second_build))  # waits for the lock first
    threads[1].start()
    time.sleep(0.05)
    threads.append(threading.Thread(target=store))  # then the store waits too
    threads[2].start()
    wait_until(lambda: lock._store_waiting == 1)
    first_out.set()
    for t in threads:
        t.join(10)
    assert order == ["build 1", "store", "build 2"]


def test_background_work_runs_when_the_store_is_not_waiting() -> None:
    lock = WriteLock()
    lock.acquire()
    entered = threading.Event()

    def build() -> None:
        with lock.background():
            entered.set()

    t = threading.Thread(target=build)
    t.start()
    assert not entered.wait(0.05)  # held by the store
    lock.release()
    assert entered.wait(10)
    t.join(10)
    lock.acquire()  # free again
    lock.release()


def test_release_without_acquire_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="without acquire"):
        WriteLock().release()
