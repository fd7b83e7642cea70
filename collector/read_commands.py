"""The read side of ``audit-collector``: ``query``, ``tail``, ``stats``, ``reindex``.

They open the data directory read-only (the index and the segments), so they run next
to a live ``serve`` — except ``reindex``, which rebuilds the index and so wants the
collector stopped.

Each is a module of its own: ``query`` (``collector.read_query``), ``tail``
(``collector.read_tail``), ``stats`` (``collector.read_stats``) and ``reindex``
(``collector.read_reindex``); what they share, the data directory, the filter flags and
``CommandError``, is ``collector.read_arguments``, and how records are printed
``collector.read_output``. Here they are gathered for ``collector.cli``.
"""

from __future__ import annotations

from .read_arguments import FORMATS, CommandError, data_dir_of
from .read_query import query_arguments, run_query
from .read_reindex import ProgressBar, reindex_arguments, run_reindex
from .read_stats import run_stats, stats_arguments
from .read_tail import FOLLOW_INTERVAL, run_tail, tail_arguments

__all__ = ["FOLLOW_INTERVAL", "FORMATS", "CommandError", "ProgressBar", "data_dir_of",
           "query_arguments", "reindex_arguments", "run_query", "run_reindex", "run_stats",
           "run_tail", "stats_arguments", "tail_arguments"]
