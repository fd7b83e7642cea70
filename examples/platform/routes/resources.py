"""Workspace resources: credentials, compute environments, pipelines, pipeline actions
and pipeline secrets. Edit handlers read the new values but record only the resource
id: an edit event never carries the edited parameters."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from audit_middleware import audited, from_result
from audit_middleware.catalogue import (
    COMPUTE_ENV_CREATED,
    COMPUTE_ENV_DELETED,
    COMPUTE_ENV_UPDATED,
    CREDENTIALS_CREATED,
    CREDENTIALS_DELETED,
    CREDENTIALS_UPDATED,
    PIPELINE_ACTION_CREATED,
    PIPELINE_ACTION_DELETED,
    PIPELINE_CREATED,
    PIPELINE_DELETED,
    PIPELINE_SECRET_CREATED,
    PIPELINE_SECRET_DELETED,
    PIPELINE_SECRET_UPDATED,
)

from ..payload import json_object, optional_text, string_map, text
from ..store import ComputeEnv, Credentials, Pipeline, PipelineAction, PipelineSecret, new_id
from ._common import created, deleted, ok, store, workspace

PROVIDERS = ("aws", "google", "azure", "github", "ssh")
PLATFORMS = ("aws-batch", "google-batch", "azure-batch", "slurm", "k8s")
ACTION_SOURCES = ("github", "tower")
MAX_SECRET = 4096


@audited(CREDENTIALS_CREATED, target=from_result("id"))
async def add_credentials(request: Request) -> JSONResponse:
    ws = workspace(request)
    body = await json_object(request)
    creds = store(request).credentials.add(Credentials(
        new_id("cred"), ws.id, text(body, "name"), text(body, "provider", choices=PROVIDERS),
        string_map(body, "keys"),
    ))
    return created({"id": creds.id, "name": creds.name, "provider": creds.provider})


@audited(CREDENTIALS_UPDATED, target="credentials_id")
async def edit_credentials(request: Request) -> JSONResponse:
    ws = workspace(request)
    creds = store(request).credentials.get(request.path_params["credentials_id"],
                                           workspace_id=ws.id)
    body = await json_object(request)
    name = optional_text(body, "name")
    keys = string_map(body, "keys") if "keys" in body else None
    if name is None and keys is None:
        raise HTTPException(422, "send at least one of 'name' and 'keys'")
    creds.name = name or creds.name
    creds.keys = keys or creds.keys
    return ok({"id": creds.id, "name": creds.name})


@audited(CREDENTIALS_DELETED, target="credentials_id")
async def delete_credentials(request: Request) -> JSONResponse:
    ws = workspace(request)
    creds = store(request).credentials.remove(request.path_params["credentials_id"],
                                              workspace_id=ws.id)
    return deleted(creds.id)


@audited(COMPUTE_ENV_CREATED, target=from_result("id"))
async def add_compute_env(request: Request) -> JSONResponse:
    ws = workspace(request)
    body = await json_object(request)
    data = store(request)
    creds = data.credentials.get(text(body, "credentials_id"), workspace_id=ws.id)
    ce = data.compute_envs.add(ComputeEnv(
        new_id("ce"), ws.id, text(body, "name"), text(body, "platform", choices=PLATFORMS),
        creds.id, text(body, "work_dir"),
    ))
    return created({"id": ce.id, "name": ce.name, "platform": ce.platform})


@audited(COMPUTE_ENV_UPDATED, target="compute_env_id")
async def edit_compute_env(request: Request) -> JSONResponse:
    ws = workspace(request)
    ce = store(request).compute_envs.get(request.path_params["compute_env_id"],
                                         workspace_id=ws.id)
    body = await json_object(request)
    name, work_dir = optional_text(body, "name"), optional_text(body, "work_dir")
    if name is None and work_dir is None:
        raise HTTPException(422, "send at least one of 'name' and 'work_dir'")
    ce.name = name or ce.name
    ce.work_dir = work_dir or ce.work_dir
    return ok({"id": ce.id, "name": ce.name})


@audited(COMPUTE_ENV_DELETED, target="compute_env_id")
async def delete_compute_env(request: Request) -> JSONResponse:
    ws = workspace(request)
    ce = store(request).compute_envs.remove(request.path_params["compute_env_id"],
                                            workspace_id=ws.id)
    return deleted(ce.id)


@audited(PIPELINE_CREATED, target=from_result("id"))
async def add_pipeline(request: Request) -> JSONResponse:
    ws = workspace(request)
    body = await json_object(request)
    data = store(request)
    ce = data.compute_envs.get(text(body, "compute_env_id"), workspace_id=ws.id)
    pipeline = data.pipelines.add(Pipeline(
        new_id("pipe"), ws.id, text(body, "name"), text(body, "repository"), ce.id,
    ))
    return created({"id": pipeline.id, "name": pipeline.name})


@audited(PIPELINE_DELETED, target="pipeline_id")
async def delete_pipeline(request: Request) -> JSONResponse:
    ws = workspace(request)
    pipeline = store(request).pipelines.remove(request.path_params["pipeline_id"],
                                               workspace_id=ws.id)
    return deleted(pipeline.id)


@audited(PIPELINE_ACTION_CREATED, target=from_result("id"))
async def add_action(request: Request) -> JSONResponse:
    ws = workspace(request)
    body = await json_object(request)
    data = store(request)
    pipeline = data.pipelines.get(text(body, "pipeline_id"), workspace_id=ws.id)
    action = data.actions.add(PipelineAction(
        new_id("act"), ws.id, text(body, "name"), pipeline.id,
        text(body, "source", choices=ACTION_SOURCES),
    ))
    return created({"id": action.id, "name": action.name})


@audited(PIPELINE_ACTION_DELETED, target="action_id")
async def delete_action(request: Request) -> JSONResponse:
    ws = workspace(request)
    action = store(request).actions.remove(request.path_params["action_id"],
                                           workspace_id=ws.id)
    return deleted(action.id)


@audited(PIPELINE_SECRET_CREATED, target=from_result("id"))
async def add_secret(request: Request) -> JSONResponse:
    ws = workspace(request)
    body = await json_object(request)
    secret = store(request).secrets.add(PipelineSecret(
        new_id("sec"), ws.id, text(body, "name"), text(body, "value", max_length=MAX_SECRET),
    ))
    return created({"id": secret.id, "name": secret.name})


@audited(PIPELINE_SECRET_UPDATED, target="secret_id")
async def edit_secret(request: Request) -> JSONResponse:
    ws = workspace(request)
    secret = store(request).secrets.get(request.path_params["secret_id"], workspace_id=ws.id)
    secret.value = text(await json_object(request), "value", max_length=MAX_SECRET)
    return ok({"id": secret.id, "name": secret.name})


@audited(PIPELINE_SECRET_DELETED, target="secret_id")
async def delete_secret(request: Request) -> JSONResponse:
    ws = workspace(request)
    secret = store(request).secrets.remove(request.path_params["secret_id"],
                                           workspace_id=ws.id)
    return deleted(secret.id)


WS = "/orgs/{org_id}/workspaces/{workspace_id}"

routes = [
    Route(f"{WS}/credentials", add_credentials, methods=["POST"]),
    Route(f"{WS}/credentials/{{credentials_id}}", edit_credentials, methods=["PUT"]),
    Route(f"{WS}/credentials/{{credentials_id}}", delete_credentials, methods=["DELETE"]),
    Route(f"{WS}/compute-envs", add_compute_env, methods=["POST"]),
    Route(f"{WS}/compute-envs/{{compute_env_id}}", edit_compute_env, methods=["PUT"]),
    Route(f"{WS}/compute-envs/{{compute_env_id}}", delete_compute_env, methods=["DELETE"]),
    Route(f"{WS}/pipelines", add_pipeline, methods=["POST"]),
    Route(f"{WS}/pipelines/{{pipeline_id}}", delete_pipeline, methods=["DELETE"]),
    Route(f"{WS}/actions", add_action, methods=["POST"]),
    Route(f"{WS}/actions/{{action_id}}", delete_action, methods=["DELETE"]),
    Route(f"{WS}/pipeline-secrets", add_secret, methods=["POST"]),
    Route(f"{WS}/pipeline-secrets/{{secret_id}}", edit_secret, methods=["PUT"]),
    Route(f"{WS}/pipeline-secrets/{{secret_id}}", delete_secret, methods=["DELETE"]),
]
