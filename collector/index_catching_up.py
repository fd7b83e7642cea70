"""What the readers (query, tail, losses, stats) say of an index marked ``CATCHING_UP``.

The mark alone cannot tell a start-up or ``reindex`` at work from one that failed or was
killed half way: both leave it. "Wait for it to finish" was the advice either way, also
after a ``serve`` that refused to start (a FIFO in place of a segment), when nothing was
at work and nothing would ever finish. The data directory's lock tells: whatever brings
the index up to date holds it (``Store.open``, ``reindex``), and the kernel lets it go
when that process ends, however it ends.
"""

from __future__ import annotations

from pathlib import Path

from collector.storage.data_dir_lock import LOCK_FILE, data_dir_holder

__all__ = ["catching_up_refusal", "catching_up_state"]


def catching_up_refusal(data_dir: Path, state: str, partial: str) -> str:
    """Why ``data_dir``'s index, marked catching up (``state``: the mark's value), is
    refused, and what to do; ``partial``: what would be partial (its answers, its
    sources)."""
    index = data_dir / "index.sqlite"
    held = data_dir_holder(data_dir)
    if held:
        return (f"{index} is being brought up to date with the segments ({state}): "
                f"{partial}. Wait for the collector's start-up or `reindex` to finish")
    if held is None:
        return (f"{index} is marked as being brought up to date with the segments "
                f"({state}): {partial}; {_UNKNOWN.format(data_dir=data_dir)}: if one "
                f"runs, wait for it to finish; if none does, the one that marked it failed "
                f"or was killed: fix what it reported, then start the collector or run "
                f"`audit-collector reindex`")
    return (f"{index} was left part way through being brought up to date with the "
            f"segments ({state}): {partial}. No collector or reindex runs on {data_dir} "
            f"now: the start-up or `reindex` that marked it failed or was killed. Fix "
            f"what it reported (its log or output), then start the collector (it "
            f"finishes the job) or run `audit-collector reindex`")


def catching_up_state(data_dir: Path, state: str) -> str:
    """``catching_up_refusal`` in a few words, for ``stats``'s count of events."""
    held = data_dir_holder(data_dir)
    if held:
        return f"the index is being brought up to date ({state})"
    if held is None:
        return (f"the index is marked as being brought up to date ({state}); "
                f"{_UNKNOWN.format(data_dir=data_dir)}: wait for it if one runs, else fix "
                f"what the one that failed reported and start the collector or run "
                f"`audit-collector reindex`")
    return (f"the index was left part way through being brought up to date ({state}) by "
            f"a start-up or reindex that failed or was killed (none runs now): fix what "
            f"it reported, then start the collector or run `audit-collector reindex`")


#: Whether a collector runs, when this user could not look at its lock (another user's
#: data directory): said as unknown, not guessed as "none runs".
_UNKNOWN = (f"whether a collector or reindex runs on {{data_dir}} cannot be told: this "
            f"user may open neither {{data_dir}}/{LOCK_FILE} nor the directory to see its "
            f"lock (run this as the collector's user to know)")
