"""``python -m benchmarks._serve_with_stats --data-dir DIR [serve options]``: exactly
``audit-collector serve``, and when it shuts down the Store's own counters (``fsyncs``,
``events_per_fsync``, ``written``, ...) are written to ``DIR/bench-store-stats.json``.

Why a wrapper: the collector's ``ingest-stats.json`` holds the ingest server's counters
only, and the durable-throughput benchmark reports events per fsync, which only the
Store counts. If ``collector.serve`` ever writes ``Store.stats()`` beside its ingest
counters, the benchmark can read that file instead and this module can go.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from collector import cli, serve

from ._collector import STORE_STATS_FILE


def main(argv: list[str]) -> int:
    open_store = serve.open_store

    def open_and_report(config: Any) -> tuple[Any, Any]:
        store, report = open_store(config)
        close = store.close

        def close_with_stats() -> None:
            # Read before closing: every acknowledged batch is counted by then (serve
            # drains its connections first), and a closed Store's parts are gone.
            stats = store.stats()
            (config.data_dir / STORE_STATS_FILE).write_bytes(
                orjson.dumps(stats, default=str, option=orjson.OPT_INDENT_2))
            close()

        store.close = close_with_stats
        return store, report

    serve.open_store = open_and_report
    return cli.main(["serve", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
