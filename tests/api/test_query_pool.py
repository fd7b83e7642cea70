"""The API's query threads keep nothing of a query once it is answered: an idle thread
held its last job, and with it the answer (an export's page of up to 1000 records and
its rendered bytes) until its next query, four pages for four idle threads."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

from collector.api.queries import QueryPool
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
