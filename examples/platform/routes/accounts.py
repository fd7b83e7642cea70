"""Sign-in, users (root only), personal access tokens, and the root's backend trigger."""

from __future__ import annotations

from dataclasses import asdict

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from audit_middleware import audited, from_result
from audit_middleware.catalogue import (
    ACCESS_TOKEN_CREATED,
    ACCESS_TOKEN_DELETED,
    USER_CREATED,
    USER_DELETED,
    USER_SIGN_IN,
    USER_UPDATED,
)

from ..auth import (
    check_password,
    find_user_by_email,
    hash_password,
    issue_token,
    require_root,
    require_user,
)
from ..payload import json_object, optional_text, text
from ..store import User, new_id
from ._common import backend, created, deleted, ok, store


# Nobody is signed in yet, so the principal (and target) is the user the handler just
# authenticated; the client IP is the sign-in IP, resolved like any other request's.
@audited(USER_SIGN_IN, target=from_result("user_id"), principal=from_result("user_id"),
         status="password")
async def sign_in(request: Request) -> JSONResponse:
    body = await json_object(request)
    email, password = text(body, "email"), text(body, "password", max_length=1024)
    user = find_user_by_email(store(request), email)
    if user is None or not check_password(password, user.password_hash):
        return JSONResponse({"error": "wrong email or password"}, status_code=401)
    _, token = issue_token(store(request), user.id, "session", session=True)
    return ok({"user_id": user.id, "token": token, "method": "password"})


@audited(USER_CREATED, target=from_result("id"))
async def add_user(request: Request) -> JSONResponse:
    require_root(request)
    body = await json_object(request)
    name, email = text(body, "name"), text(body, "email")
    password = text(body, "password", max_length=1024)
    if find_user_by_email(store(request), email) is not None:
        raise HTTPException(409, f"a user with email {email!r} already exists")
    user = store(request).users.add(User(new_id("usr"), name, email, hash_password(password)))
    return created(_public(user))


@audited(USER_UPDATED, target="user_id")
async def edit_user(request: Request) -> JSONResponse:
    require_root(request)
    user = store(request).users.get(request.path_params["user_id"])
    body = await json_object(request)
    name, email = optional_text(body, "name"), optional_text(body, "email")
    if name is None and email is None:
        raise HTTPException(422, "send at least one of 'name' and 'email'")
    user.name = name or user.name
    user.email = email or user.email
    return ok(_public(user))


@audited(USER_DELETED, target="user_id")
async def delete_user(request: Request) -> JSONResponse:
    acting = require_root(request)
    user_id = request.path_params["user_id"]
    if user_id == acting.id:
        raise HTTPException(409, "root users cannot delete themselves")
    data = store(request)
    data.users.remove(user_id)
    for token in data.tokens.values():
        if token.user_id == user_id:
            data.tokens.remove(token.id)
    for participant in data.participants.values():
        if participant.user_id == user_id:
            data.participants.remove(participant.id)
    return deleted(user_id)


@audited(ACCESS_TOKEN_CREATED, target=from_result("id"))
async def add_token(request: Request) -> JSONResponse:
    user = require_user(request)
    name = text(await json_object(request), "name")
    row, secret = issue_token(store(request), user.id, name)
    # The secret is shown once, here; the audit record only ever carries the token id.
    return created({"id": row.id, "name": row.name, "token": secret})


@audited(ACCESS_TOKEN_DELETED, target="token_id")
async def delete_token(request: Request) -> JSONResponse:
    user = require_user(request)
    token_id = request.path_params["token_id"]
    token = store(request).tokens.get(token_id, user_id=user.id)
    if token.session:
        raise HTTPException(404, f"no access token {token_id!r} here (sessions are not tokens)")
    store(request).tokens.remove(token_id)
    return deleted(token_id)


async def tick_jobs(request: Request) -> JSONResponse:
    require_root(request)
    return ok(asdict(backend(request).tick()))


def _public(user: User) -> dict[str, str]:
    return {"id": user.id, "name": user.name, "email": user.email}


routes = [
    Route("/sign-in", sign_in, methods=["POST"]),
    Route("/users", add_user, methods=["POST"]),
    Route("/users/{user_id}", edit_user, methods=["PUT"]),
    Route("/users/{user_id}", delete_user, methods=["DELETE"]),
    Route("/tokens", add_token, methods=["POST"]),
    Route("/tokens/{token_id}", delete_token, methods=["DELETE"]),
    Route("/admin/jobs/tick", tick_jobs, methods=["POST"]),
]
