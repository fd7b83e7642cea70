"""The API's query threads keep nothing of a query once it is answered: an idle thread
held its last job, and with it the answer (an export's page of up to 1000 records and
its rendered bytes) until its next query, four pages for four idle threads. Nor of one
refused for want of a thread, while the threads stay held."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from pathlib import Path

import pytest

from collector.api import queries
from collector.api.queries import QueriesBusy, QueryPool
from collector.query import Reader
from tests.collector.storage_helpers import open_store, wait_until

#: Seconds a test waits for what must come: a bound on a failure, not a timing.
BOUND = 20


class Answer:
    """Stands for a page of records: only its lifetime matters."""


def test_an_idle_query_thread_holds_neither_its_last_answer_nor_its_work(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    with open_store(data):
        pool = QueryPool(data, threads=1)
        try:
            async def ask() -> tuple[weakref.ref[Answer], weakref.ref[Answer]]:
                page = Answer()  # what an export's next job carries (its ``records``)

                def work(reader: Reader, page: Answer = page) -> Answer:
                    return Answer()

                answer = await pool.run(work)
                return weakref.ref(answer), weakref.ref(page)

            answer, page = asyncio.run(ask())

            def dropped() -> bool:
                gc.collect()
                return answer() is None and page() is None

            # The thread lets go once the answer is handed over, which it cannot be
            # made to signal: waited for, a bound on a failure only.
            wait_until(dropped, BOUND)
        finally:
            assert pool.close(BOUND) == 0


@pytest.mark.parametrize("ended", ["refused", "cancelled"])
def test_a_query_no_thread_took_holds_none_of_its_work_while_they_stay_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ended: str) -> None:
    """A job no thread took (refused after the wait for one, or its request gone first)
    stays in the queue until a thread comes to it: on a hung disk, for as long as the
    disk hangs, one for each such query meanwhile. It kept its work, and an export's
    next job holds the page it renders (up to 1000 records)."""
    if ended == "refused":
        monkeypatch.setattr(queries, "THREAD_WAIT", 0.2)  # a wait that must fail: any will
    data = tmp_path / "data"
    reading = threading.Event()  # set: the only thread is in the read that holds it
    hung = threading.Event()  # set: that read ends

    def hung_read(reader: Reader) -> None:
        reading.set()
        hung.wait(BOUND)

    with open_store(data):
        pool = QueryPool(data, threads=1)
        try:
            async def page_kept_while_held() -> bool:
                holding = asyncio.ensure_future(pool.run(hung_read))
                try:
                    assert await asyncio.to_thread(reading.wait, BOUND)
                    page = Answer()

                    def work(reader: Reader, page: Answer = page) -> Answer:
                        return Answer()

                    try:
                        if ended == "refused":
                            await pool.run(work)
                        else:  # its client gave up first: any time will do
                            await asyncio.wait_for(pool.run(work), 0.2)
                    except (QueriesBusy, TimeoutError):
                        pass  # not kept: its traceback holds the work too
                    else:
                        raise AssertionError("taken, with the only thread held")
                    kept = weakref.ref(page)
                    del page, work
                    gc.collect()
                    return kept() is not None  # looked at while the thread is held
                finally:
                    hung.set()
                    await holding

            assert not asyncio.run(page_kept_while_held())
            # A refusal is counted, once, by its reason (busy: the thread was held for
            # less than query_timeout); a caller that stopped waiting first was not
            # refused: nobody was told anything.
            refused = {"queries_refused": 1, "queries_refused_busy": 1}
            assert pool.stats() == (refused if ended == "refused" else {})
        finally:
            hung.set()
            assert pool.close(BOUND) == 0
