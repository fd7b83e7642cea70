"""The run backend: launches runs, advances them, and drops deleted ones.

What a user asks for over HTTP (launch, delete, ...) is recorded by the route with the
user as principal. What the backend does on its own is recorded here as ``system``:
status changes, completion, dropping a run marked for deletion, and (through the vault)
every credentials read a launch needs. Like the routes' events, a run's events target its
lineage's initial launch and name a relaunched or resumed run in ``status``
(``Run.event_status``). ``tick()`` does one step of that work; the app
calls it from a background loop (``create_app(jobs_interval=...)``) or when a root user
asks (``POST /admin/jobs/tick``), which keeps tests deterministic.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from starlette.exceptions import HTTPException

from audit_middleware.catalogue import RUN_COMPLETED, RUN_DROPPED, RUN_STATUS_CHANGED

from .store import Run, Store, new_id
from .system import emit_system
from .vault import Vault

log = logging.getLogger("examples.platform.jobs")

OUTCOMES = ("succeeded", "failed")


@dataclass
class TickReport:
    status_changed: int = 0
    completed: int = 0
    dropped: int = 0


class RunBackend:
    def __init__(self, store: Store, vault: Vault) -> None:
        self.store = store
        self.vault = vault

    def launch(self, workspace_id: str, compute_env_id: str, repository: str, *,
               outcome: str = "succeeded", launch_id: str | None = None,
               relaunched_from: str | None = None) -> Run:
        """Start a run on a compute environment (reading its credentials); a relaunch or
        resume passes the ``launch_id`` of the lineage it continues and the run it
        continues from."""
        ce = self.store.compute_envs.get(compute_env_id, workspace_id=workspace_id)
        self.vault.read(workspace_id, ce.credentials_id)
        run_id = new_id("run")
        return self.store.runs.add(Run(run_id, workspace_id, launch_id or run_id,
                                       repository, ce.id, outcome=outcome,
                                       relaunched_from=relaunched_from))

    def record_external(self, workspace_id: str, repository: str) -> Run:
        """A run started outside the platform (a Nextflow CLI reporting to it): the
        platform only creates its record, so no credentials are read."""
        run_id = new_id("run")
        return self.store.runs.add(Run(run_id, workspace_id, run_id, repository, None))

    def relaunch(self, workspace_id: str, run_id: str) -> Run:
        previous = self.live_run(workspace_id, run_id)
        if previous.compute_env_id is None:
            raise HTTPException(409, f"run {run_id} was started outside the platform and "
                                     f"cannot be relaunched from it")
        return self.launch(workspace_id, previous.compute_env_id, previous.repository,
                           outcome=previous.outcome, launch_id=previous.launch_id,
                           relaunched_from=previous.id)

    def mark_for_deletion(self, workspace_id: str, run_id: str) -> Run:
        run = self.live_run(workspace_id, run_id)
        run.marked_for_deletion = True
        return run

    def live_run(self, workspace_id: str, run_id: str) -> Run:
        run = self.store.runs.get(run_id, workspace_id=workspace_id)
        if run.marked_for_deletion:
            raise HTTPException(409, f"run {run_id} is marked for deletion")
        return run

    def tick(self) -> TickReport:
        """One step for every run: drop the deleted, start the submitted, finish the
        running."""
        report = TickReport()
        for run in self.store.runs.values():
            if run.marked_for_deletion:
                self.store.runs.remove(run.id)
                emit_system(self.store, RUN_DROPPED, run.launch_id, run.workspace_id,
                            status=run.event_status())
                report.dropped += 1
            elif run.status == "submitted":
                run.status = "running"
                emit_system(self.store, RUN_STATUS_CHANGED, run.launch_id, run.workspace_id,
                            status=run.event_status(run.status))
                report.status_changed += 1
            elif run.status == "running":
                run.status = run.outcome
                emit_system(self.store, RUN_COMPLETED, run.launch_id, run.workspace_id,
                            status=run.event_status(run.status))
                report.completed += 1
        return report

    async def run_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.tick()
            except Exception:  # one bad step must not stop the backend
                log.exception("run backend step failed; retrying in %.1fs", interval)
