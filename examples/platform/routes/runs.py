"""Runs. A launch, relaunch or resume reads the compute environment's credentials (a
``credentials_accessed`` by ``system``, from the vault). Every event of a run is recorded
against the *initial launch* run id, the lineage's ``launch_id``; a relaunched or resumed
run, whose own id differs, is named in ``status`` (``run <id>``; a relaunch or resume
also names the run it continues: ``run <id> from <previous>``), so the log alone tells
the runs of a lineage apart. The API still addresses a run by its own id. Deleting only
marks a run; the backend drops it later (``run_dropped``, by ``system``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from audit_middleware import AuditCall, audited, from_result
from audit_middleware.catalogue import (
    RUN_CREATED,
    RUN_DELETED,
    RUN_LAUNCHED,
    RUN_RELAUNCHED,
    RUN_RESUMED,
)

from ..jobs import OUTCOMES
from ..payload import json_object, optional_text, text
from ..store import Run, run_event_status
from ._common import backend, created, ok, store, workspace

#: Every run event's target: the lineage's initial launch, at any relaunch depth.
INITIAL_LAUNCH = from_result("launch_id")


def this_run(call: AuditCall) -> str:
    """Every run event's status: the run itself, when it is not the initial launch."""
    return run_event_status(call.result_value("id"), call.result_value("launch_id"))


def new_run(call: AuditCall) -> str:
    """A relaunch's or resume's status: the new run, and the run it continues from
    (``run <new> from <previous>``), so that the lineage's shape, not only its members,
    can be read from the log."""
    return f"{this_run(call)} from {call.result_value('relaunched_from')}"


@audited(RUN_LAUNCHED, target=INITIAL_LAUNCH, status=this_run)
async def launch_run(request: Request) -> JSONResponse:
    ws = workspace(request)
    body = await json_object(request)
    # ``outcome`` stands in for what the workflow will do, so demos can show failures.
    outcome = optional_text(body, "outcome", choices=OUTCOMES) or "succeeded"
    pipeline_id = optional_text(body, "pipeline_id")
    if pipeline_id is not None:
        pipeline = store(request).pipelines.get(pipeline_id, workspace_id=ws.id)
        ce_id, repository = pipeline.compute_env_id, pipeline.repository
    else:
        ce_id, repository = text(body, "compute_env_id"), text(body, "repository")
    run = backend(request).launch(ws.id, ce_id, repository, outcome=outcome)
    return created(_public(run))


@audited(RUN_CREATED, target=INITIAL_LAUNCH, status=this_run)
async def create_run(request: Request) -> JSONResponse:
    ws = workspace(request)
    repository = text(await json_object(request), "repository")
    return created(_public(backend(request).record_external(ws.id, repository)))


@audited(RUN_RELAUNCHED, target=INITIAL_LAUNCH, status=new_run)
async def relaunch_run(request: Request) -> JSONResponse:
    ws = workspace(request)
    return created(_public(backend(request).relaunch(ws.id, request.path_params["run_id"])))


@audited(RUN_RESUMED, target=INITIAL_LAUNCH, status=new_run)
async def resume_run(request: Request) -> JSONResponse:
    ws = workspace(request)
    return created(_public(backend(request).relaunch(ws.id, request.path_params["run_id"])))


async def get_run(request: Request) -> JSONResponse:
    ws = workspace(request)
    return ok(_public(store(request).runs.get(request.path_params["run_id"],
                                              workspace_id=ws.id)))


@audited(RUN_DELETED, target=INITIAL_LAUNCH, status=this_run)
async def delete_run(request: Request) -> JSONResponse:
    ws = workspace(request)
    run = backend(request).mark_for_deletion(ws.id, request.path_params["run_id"])
    return JSONResponse(_public(run), status_code=202)


def _public(run: Run) -> dict[str, object]:
    return {"id": run.id, "launch_id": run.launch_id, "relaunched_from": run.relaunched_from,
            "status": run.status, "marked_for_deletion": run.marked_for_deletion}


WS = "/orgs/{org_id}/workspaces/{workspace_id}"

routes = [
    Route(f"{WS}/runs/launch", launch_run, methods=["POST"]),
    Route(f"{WS}/runs", create_run, methods=["POST"]),
    Route(f"{WS}/runs/{{run_id}}/relaunch", relaunch_run, methods=["POST"]),
    Route(f"{WS}/runs/{{run_id}}/resume", resume_run, methods=["POST"]),
    Route(f"{WS}/runs/{{run_id}}", get_run, methods=["GET"]),
    Route(f"{WS}/runs/{{run_id}}", delete_run, methods=["DELETE"]),
]
