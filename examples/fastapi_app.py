"""A small FastAPI app: ``@audited`` under FastAPI's path-operation decorators.

The decorator keeps the handler's signature (``functools.wraps``), so FastAPI still sees
the path parameters, the request body model and the ``Depends`` dependencies, and
injects them as usual; the event reads the injected user as its principal. Both async
and sync (threadpool) path operations are shown. A request the authentication
dependency refuses (401) never reaches a handler: the middleware's ``denied_event``
records it as ``request_denied`` (target the path, status ``HTTP 401 on POST``).

    AUDIT_COLLECTOR_URL=unix://$PWD/audit-data/collector.sock \
        uvicorn --factory --no-proxy-headers examples.fastapi_app:create_app

(``AUDIT_COLLECTOR_URL``: the collector ``make run`` starts, or ``audit-collector
serve``'s; or ``AUDIT_EVENTS_FILE=events.jsonl``: see ``examples/audit_sink.py``.)

(``--no-proxy-headers``: uvicorn would otherwise take X-Forwarded-For from 127.0.0.1
itself, before the audit middleware sees the real peer; docs/record.md.)
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from audit_middleware import (
    AuditCall,
    AuditMiddleware,
    audited,
    from_result,
    path_param,
    register_resource,
)
from audit_middleware.catalogue import (
    CREDENTIALS_CREATED,
    CREDENTIALS_DELETED,
    CREDENTIALS_UPDATED,
)
from examples.audit_sink import configure_sink_from_environment

#: Demo bearer tokens -> user ids.
TOKENS = {"demo-carol-token": "usr_carol", "demo-dave-token": "usr_dave"}
WORKSPACES = {"ws_lab": "lab", "ws_prod": "production"}
#: The app's own event type for requests answered 401 or 403 (``denied_event``).
REQUEST_DENIED = "request_denied"


@dataclass(frozen=True)
class User:
    id: str


@dataclass
class CredentialsStore:
    #: credentials id -> (workspace id, name, secret)
    rows: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    def get(self, workspace_id: str, credentials_id: str) -> tuple[str, str, str]:
        row = self.rows.get(credentials_id)
        if row is None or row[0] != workspace_id:
            raise HTTPException(404, f"no credentials {credentials_id!r} in {workspace_id}")
        return row


class CredentialsIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    secret: str = Field(min_length=1, max_length=4096)


_bearer = HTTPBearer(auto_error=False)


def current_user(
    auth: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    user_id = TOKENS.get(auth.credentials) if auth is not None else None
    if user_id is None:
        raise HTTPException(401, "send 'Authorization: Bearer <token>' with a known token",
                            headers={"WWW-Authenticate": "Bearer"})
    return User(user_id)


def credentials_store(request: Request) -> CredentialsStore:
    store: CredentialsStore = request.app.state.credentials
    return store


def workspace(workspace_id: str) -> str:
    if workspace_id not in WORKSPACES:
        raise HTTPException(404, f"no workspace {workspace_id!r}")
    return workspace_id


CurrentUser = Annotated[User, Depends(current_user)]
Store = Annotated[CredentialsStore, Depends(credentials_store)]
Workspace = Annotated[str, Depends(workspace)]


def injected_user(call: AuditCall) -> str:
    """The principal is the user FastAPI injected into the handler."""
    user: User = call.kwargs["user"]
    return user.id


def create_app(*, trusted_proxies: Iterable[str] = ()) -> FastAPI:
    configure_sink_from_environment()
    app = FastAPI(title="audit-middleware FastAPI example")
    app.state.credentials = CredentialsStore()
    register_resource("request", {"denied": REQUEST_DENIED})  # the same mapping: no-op
    app.add_middleware(
        AuditMiddleware,
        trusted_proxies=list(trusted_proxies),
        workspace=path_param("workspace_id", lookup=WORKSPACES.get),
        denied_event=REQUEST_DENIED,
    )

    @app.post("/workspaces/{workspace_id}/credentials", status_code=201)
    @audited(CREDENTIALS_CREATED, target=from_result("id"), principal=injected_user)
    async def add_credentials(workspace_id: Workspace, body: CredentialsIn,
                              user: CurrentUser, store: Store) -> dict[str, str]:
        credentials_id = "cred_" + secrets.token_hex(5)
        store.rows[credentials_id] = (workspace_id, body.name, body.secret)
        return {"id": credentials_id, "name": body.name, "owner": user.id}

    @app.put("/workspaces/{workspace_id}/credentials/{credentials_id}")
    @audited(CREDENTIALS_UPDATED, target="credentials_id", principal=injected_user)
    def edit_credentials(workspace_id: Workspace, credentials_id: str, body: CredentialsIn,
                         user: CurrentUser, store: Store) -> dict[str, str]:
        store.get(workspace_id, credentials_id)
        store.rows[credentials_id] = (workspace_id, body.name, body.secret)
        return {"id": credentials_id, "name": body.name, "owner": user.id}

    @app.delete("/workspaces/{workspace_id}/credentials/{credentials_id}")
    @audited(CREDENTIALS_DELETED, target="credentials_id", principal=injected_user)
    def delete_credentials(workspace_id: Workspace, credentials_id: str, user: CurrentUser,
                           store: Store) -> dict[str, str]:
        store.get(workspace_id, credentials_id)
        del store.rows[credentials_id]
        return {"id": credentials_id, "deleted_by": user.id}

    return app
