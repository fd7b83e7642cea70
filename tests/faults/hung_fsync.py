"""``python -m collector`` whose segment fsyncs hang while a file exists (its path in
``HUNG_FSYNC_WHILE``): a dying disk or a frozen network file system, which no test can
make of a real one. Removing the file lets the fsync under way complete."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Final

from collector.cli import main
from collector.storage.segments import ActiveSegment

GATE_VARIABLE: Final = "HUNG_FSYNC_WHILE"

sync = ActiveSegment.sync


def hung_sync(segment: ActiveSegment) -> None:
    gate = Path(os.environ[GATE_VARIABLE])
    while gate.exists():
        time.sleep(0.01)
    sync(segment)


if __name__ == "__main__":
    ActiveSegment.sync = hung_sync  # type: ignore[method-assign]
    raise SystemExit(main())
