"""What every route needs: the app's store and backend, the acting user, the workspace
of the path, and JSON responses."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..auth import require_user
from ..jobs import RunBackend
from ..store import Store, Workspace
from ..vault import Vault


def store(request: Request) -> Store:
    value: Store = request.app.state.store
    return value


def backend(request: Request) -> RunBackend:
    value: RunBackend = request.app.state.jobs
    return value


def vault(request: Request) -> Vault:
    value: Vault = request.app.state.vault
    return value


def workspace(request: Request) -> Workspace:
    """The workspace of ``/orgs/{org_id}/workspaces/{workspace_id}/...`` for a signed-in
    user (404 when it is not in that organization)."""
    require_user(request)
    params = request.path_params
    return store(request).workspace(params["org_id"], params["workspace_id"])


def created(payload: dict[str, Any]) -> JSONResponse:
    return JSONResponse(payload, status_code=201)


def ok(payload: dict[str, Any]) -> JSONResponse:
    return JSONResponse(payload)


def deleted(ident: str) -> JSONResponse:
    return JSONResponse({"id": ident, "deleted": True})
