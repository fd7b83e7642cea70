"""Following runs from the audit records alone, as an investigator would: every event of
a run targets its lineage's initial launch run id, and a relaunched or resumed run names
its own id in ``status`` (``run <id>``, after the run status when there is one); a
relaunch or resume names the run it continues from too (``run <id> from <previous>``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

#: Events that start a lineage: their target is the run's own id, their status empty.
STARTS = ("run_launched", "run_created")
#: Events that add a run to a lineage: their status names the new run and the one it
#: continues from, a run of the same lineage.
CONTINUES = ("run_relaunched", "run_resumed")
#: What happens to a run afterwards.
LATER = ("run_status_changed", "run_completed", "run_deleted", "run_dropped")
#: A later event's status: the run status (or nothing), then the run when it is not the
#: initial launch. Ids are ``new_id("run")``'s: ``run_`` and ten hex digits.
LATER_STATUS = re.compile(r"(?:(?:running|succeeded|failed)(?:; (?=run )|$))?"
                          r"(?:run (?P<run>run_[0-9a-f]{10}))?")


def follow_runs(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Every run the records show, mapped to its initial launch run id; an
    ``AssertionError`` naming the record when one cannot be followed."""
    launch_of: dict[str, str] = {}
    for r in records:
        kind, target, status = r["type"], r["target"], r["status"]
        if kind in STARTS:
            assert status == "" and target not in launch_of, r
            launch_of[target] = target
        elif kind in CONTINUES:
            match = re.fullmatch(r"run (run_[0-9a-f]{10}) from (run_[0-9a-f]{10})", status)
            assert match is not None and launch_of.get(target) == target, r
            own, previous = match.groups()
            assert own not in launch_of and launch_of.get(previous) == target, r
            launch_of[own] = target
        elif kind in LATER:
            match = LATER_STATUS.fullmatch(status)
            assert match is not None and launch_of.get(target) == target, r
            run = match["run"] or target
            assert launch_of.get(run) == target, r  # a run of this lineage, known before
    return launch_of
