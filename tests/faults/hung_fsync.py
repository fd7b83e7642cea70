"""``python -m collector`` on a hung disk while a file exists (its path in
``HUNG_FSYNC_WHILE``): its segment fsyncs and its live stats file's writes hang, as on a
dying disk or a frozen network file system, which no test can make of a real one.
Removing the file lets what is under way complete. A stats write that hangs first
makes ``stats_hung(gate)``, for a test to know it is under way."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Final

from collector.cli import main
from collector.stats_file import StatsFile
from collector.storage.segments import ActiveSegment

GATE_VARIABLE: Final = "HUNG_FSYNC_WHILE"

sync = ActiveSegment.sync
write_stats = StatsFile.write


def stats_hung(gate: Path) -> Path:
    return gate.with_name(gate.name + ".stats-hung")


def _wait_while(gate: Path) -> None:
    while gate.exists():
        time.sleep(0.01)


def hung_sync(segment: ActiveSegment) -> None:
    _wait_while(Path(os.environ[GATE_VARIABLE]))
    sync(segment)


def hung_stats_write(stats_file: StatsFile, live: dict[str, Any]) -> bool:
    gate = Path(os.environ[GATE_VARIABLE])
    if gate.exists():
        stats_hung(gate).touch()
        _wait_while(gate)
    return write_stats(stats_file, live)


if __name__ == "__main__":
    ActiveSegment.sync = hung_sync  # type: ignore[method-assign]
    StatsFile.write = hung_stats_write  # type: ignore[method-assign]
    raise SystemExit(main())
