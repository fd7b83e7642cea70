"""Organizations, their teams and workspaces, and workspace participants."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from audit_middleware import audited, from_result
from audit_middleware.catalogue import (
    ORGANIZATION_CREATED,
    ORGANIZATION_DELETED,
    PARTICIPANT_ADDED,
    PARTICIPANT_DELETED,
    PARTICIPANT_ROLE_UPDATED,
    TEAM_CREATED,
    TEAM_DELETED,
    WORKSPACE_CREATED,
    WORKSPACE_DELETED,
)

from ..auth import require_user
from ..payload import json_object, text
from ..store import Participant, Team, new_id
from ._common import created, deleted, ok, store, workspace

ROLES = ("owner", "admin", "maintain", "launch", "connect", "view")


# A new organization is not in the path yet: the record takes it from the response.
@audited(ORGANIZATION_CREATED, target=from_result("id"), org_id=from_result("id"),
         org_name=from_result("name"))
async def add_org(request: Request) -> JSONResponse:
    require_user(request)
    org = store(request).add_org(text(await json_object(request), "name"))
    return created({"id": org.id, "name": org.name})


@audited(ORGANIZATION_DELETED, target="org_id")
async def delete_org(request: Request) -> JSONResponse:
    require_user(request)
    org = store(request).remove_org(request.path_params["org_id"])
    return deleted(org.id)


@audited(TEAM_CREATED, target=from_result("id"))
async def add_team(request: Request) -> JSONResponse:
    require_user(request)
    org = store(request).orgs.get(request.path_params["org_id"])
    name = text(await json_object(request), "name")
    team = store(request).teams.add(Team(new_id("team"), org.id, name))
    return created({"id": team.id, "name": team.name})


@audited(TEAM_DELETED, target="team_id")
async def delete_team(request: Request) -> JSONResponse:
    require_user(request)
    params = request.path_params
    team = store(request).teams.remove(params["team_id"], org_id=params["org_id"])
    return deleted(team.id)


@audited(WORKSPACE_CREATED, target=from_result("id"), workspace_id=from_result("id"),
         workspace_name=from_result("name"))
async def add_workspace(request: Request) -> JSONResponse:
    require_user(request)
    name = text(await json_object(request), "name")
    ws = store(request).add_workspace(request.path_params["org_id"], name)
    return created({"id": ws.id, "name": ws.name})


@audited(WORKSPACE_DELETED, target="workspace_id")
async def delete_workspace(request: Request) -> JSONResponse:
    ws = workspace(request)
    store(request).workspaces.remove(ws.id)
    return deleted(ws.id)


@audited(PARTICIPANT_ADDED, target=from_result("id"))
async def add_participant(request: Request) -> JSONResponse:
    ws = workspace(request)
    body = await json_object(request)
    user_id, role = text(body, "user_id"), text(body, "role", choices=ROLES)
    data = store(request)
    data.users.get(user_id)
    if any(p.user_id == user_id for p in data.participants.values()
           if p.workspace_id == ws.id):
        raise HTTPException(409, f"user {user_id} already participates in this workspace")
    participant = data.participants.add(Participant(new_id("part"), ws.id, user_id, role))
    return created({"id": participant.id, "user_id": user_id, "role": role})


@audited(PARTICIPANT_ROLE_UPDATED, target="participant_id")
async def update_participant_role(request: Request) -> JSONResponse:
    ws = workspace(request)
    participant = store(request).participants.get(
        request.path_params["participant_id"], workspace_id=ws.id)
    participant.role = text(await json_object(request), "role", choices=ROLES)
    return ok({"id": participant.id, "role": participant.role})


@audited(PARTICIPANT_DELETED, target="participant_id")
async def delete_participant(request: Request) -> JSONResponse:
    ws = workspace(request)
    participant = store(request).participants.remove(
        request.path_params["participant_id"], workspace_id=ws.id)
    return deleted(participant.id)


WS = "/orgs/{org_id}/workspaces/{workspace_id}"

routes = [
    Route("/orgs", add_org, methods=["POST"]),
    Route("/orgs/{org_id}", delete_org, methods=["DELETE"]),
    Route("/orgs/{org_id}/teams", add_team, methods=["POST"]),
    Route("/orgs/{org_id}/teams/{team_id}", delete_team, methods=["DELETE"]),
    Route("/orgs/{org_id}/workspaces", add_workspace, methods=["POST"]),
    Route(WS, delete_workspace, methods=["DELETE"]),
    Route(f"{WS}/participants", add_participant, methods=["POST"]),
    Route(f"{WS}/participants/{{participant_id}}/role", update_participant_role,
          methods=["PUT"]),
    Route(f"{WS}/participants/{{participant_id}}", delete_participant, methods=["DELETE"]),
]
