"""Views recorded with ``@audited``. A view returning an error (status >= 400) records
nothing; the target comes from a URL parameter or from the JSON the view returns."""

from __future__ import annotations

import json
import secrets
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_http_methods

from audit_middleware import audited, from_result
from audit_middleware.catalogue import PIPELINE_CREATED, PIPELINE_DELETED, USER_SIGN_IN

from .auth import USERS

WORKSPACES = {"ws_lab": "lab"}
PIPELINES: dict[str, str] = {}  # pipeline id -> workspace id


def _body(request: HttpRequest) -> Any:
    try:
        return json.loads(request.body or b"null")
    except ValueError:
        return None


@require_http_methods(["POST"])
@audited(USER_SIGN_IN, target=from_result("user_id"), principal=from_result("user_id"),
         status="password")
def sign_in(request: HttpRequest) -> JsonResponse:
    body = _body(request)
    if not isinstance(body, dict):
        return JsonResponse({"error": 'send {"email": ..., "password": ...}'}, status=400)
    user = USERS.get(str(body.get("email")))
    if user is None or not secrets.compare_digest(str(body.get("password")), user.password):
        return JsonResponse({"error": "wrong email or password"}, status=401)
    return JsonResponse({"user_id": user.pk, "token": user.token})


@require_http_methods(["POST"])
@audited(PIPELINE_CREATED, target=from_result("id"))
def add_pipeline(request: HttpRequest, workspace_id: str) -> JsonResponse:
    if workspace_id not in WORKSPACES:
        return JsonResponse({"error": f"no workspace {workspace_id!r}"}, status=404)
    body = _body(request)
    if not isinstance(body, dict) or not isinstance(body.get("repository"), str):
        return JsonResponse({"error": 'send {"repository": "https://..."}'}, status=422)
    pipeline_id = "pipe_" + secrets.token_hex(5)
    PIPELINES[pipeline_id] = workspace_id
    return JsonResponse({"id": pipeline_id}, status=201)


@require_http_methods(["DELETE"])
@audited(PIPELINE_DELETED, target="pipeline_id")
def delete_pipeline(request: HttpRequest, workspace_id: str, pipeline_id: str) -> JsonResponse:
    if PIPELINES.get(pipeline_id) != workspace_id:
        return JsonResponse({"error": f"no pipeline {pipeline_id!r}"}, status=404)
    del PIPELINES[pipeline_id]
    return JsonResponse({"id": pipeline_id, "deleted": True})

