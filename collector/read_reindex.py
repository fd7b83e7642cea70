"""``audit-collector reindex``: the index rebuilt from the segments (the collector
stopped), with a progress bar.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from . import config as collector_config
from . import query as q
from .read_arguments import data_dir_of


def reindex_arguments(parser: argparse.ArgumentParser) -> None:
    collector_config.add_arguments(parser, ["data_dir"])


def run_reindex(args: argparse.Namespace) -> int:
    data_dir = data_dir_of(args)
    bar = ProgressBar(sys.stderr)
    report = q.reindex(data_dir, progress=bar.update)
    bar.done()
    print(f"reindexed {data_dir}: {report.describe()}")
    return 0


class ProgressBar:
    """``[#####.....] 52% 1234/2345`` on a terminal; a line per 10 % otherwise."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out, self.width, self.last = out, width, -1

    def update(self, done: int, total: int) -> None:
        pct = 100 if total <= 0 else min(100, done * 100 // total)
        if self.out.isatty():
            filled = self.width * pct // 100
            self.out.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {pct:3d}% "
                           f"{done}/{total}")
        elif pct // 10 != self.last // 10:
            self.out.write(f"reindex: {pct}% ({done}/{total})\n")
        self.last = pct
        self.out.flush()

    def done(self) -> None:
        if self.out.isatty():
            self.out.write("\n")
