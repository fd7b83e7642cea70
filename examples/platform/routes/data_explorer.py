"""Data Explorer: cloud buckets linked to a workspace, and their files.

A private bucket is opened with its credentials, so every file operation on it also
records the application's credentials read (``credentials_accessed`` by ``system``).
A file event's target is the file's full address: ``<bucket uri>/<path>``.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from audit_middleware import AuditCall, audited, from_result
from audit_middleware.catalogue import (
    BUCKET_CREATED,
    BUCKET_DELETED,
    BUCKET_FILE_DOWNLOADED,
    BUCKET_FILE_PREVIEWED,
    BUCKET_FILE_UPLOADED,
    BUCKET_HIDDEN,
    BUCKET_SHOWN,
    BUCKET_UPDATED,
)

from ..payload import json_object, optional_text, text
from ..store import Bucket, new_id
from ._common import created, deleted, ok, store, vault, workspace

SCHEMES = ("s3://", "gs://", "az://")
PREVIEW_BYTES = 1024
MAX_PATH = 1024


@audited(BUCKET_CREATED, target=from_result("id"))
async def add_bucket(request: Request) -> JSONResponse:
    ws = workspace(request)
    body = await json_object(request)
    uri = text(body, "uri").rstrip("/")
    if not uri.startswith(SCHEMES) or len(uri) <= 5:
        raise HTTPException(422, f"field 'uri' must be a bucket address starting with one "
                                 f"of {list(SCHEMES)}, e.g. s3://my-bucket")
    creds_id = optional_text(body, "credentials_id")
    if creds_id is not None:
        store(request).credentials.get(creds_id, workspace_id=ws.id)
    bucket = store(request).buckets.add(
        Bucket(new_id("bkt"), ws.id, text(body, "name"), uri, creds_id))
    return created(_public(bucket))


@audited(BUCKET_UPDATED, target="bucket_id")
async def edit_bucket(request: Request) -> JSONResponse:
    bucket = _bucket(request)
    bucket.name = text(await json_object(request), "name")
    return ok(_public(bucket))


@audited(BUCKET_DELETED, target="bucket_id")
async def delete_bucket(request: Request) -> JSONResponse:
    bucket = _bucket(request)
    store(request).buckets.remove(bucket.id)
    return deleted(bucket.id)


@audited(BUCKET_HIDDEN, target="bucket_id")
async def hide_bucket(request: Request) -> JSONResponse:
    bucket = _bucket(request)
    bucket.hidden = True
    return ok(_public(bucket))


@audited(BUCKET_SHOWN, target="bucket_id")
async def show_bucket(request: Request) -> JSONResponse:
    bucket = _bucket(request)
    bucket.hidden = False
    return ok(_public(bucket))


def file_address(call: AuditCall) -> str:
    bucket = store(call.args[0]).buckets.get(call.param("bucket_id"))
    return f"{bucket.uri}/{call.param('path')}"


@audited(BUCKET_FILE_UPLOADED, target=file_address)
async def upload_file(request: Request) -> JSONResponse:
    bucket, path = _open(request)
    bucket.files[path] = await request.body()
    return created({"path": path, "size": len(bucket.files[path])})


@audited(BUCKET_FILE_DOWNLOADED, target=file_address)
async def download_file(request: Request) -> Response:
    bucket, path = _open(request)
    return Response(_content(bucket, path), media_type="application/octet-stream")


@audited(BUCKET_FILE_PREVIEWED, target=file_address)
async def preview_file(request: Request) -> JSONResponse:
    bucket, path = _open(request)
    head = _content(bucket, path)[:PREVIEW_BYTES]
    return ok({"path": path, "preview": head.decode("utf-8", errors="replace")})


def _bucket(request: Request) -> Bucket:
    ws = workspace(request)
    return store(request).buckets.get(request.path_params["bucket_id"], workspace_id=ws.id)


def _open(request: Request) -> tuple[Bucket, str]:
    bucket = _bucket(request)
    path = request.path_params["path"]
    if not path or len(path) > MAX_PATH or ".." in path.split("/"):
        raise HTTPException(422, f"a file path is 1-{MAX_PATH} characters without '..'")
    if bucket.credentials_id is not None:
        vault(request).read(bucket.workspace_id, bucket.credentials_id)
    return bucket, path


def _content(bucket: Bucket, path: str) -> bytes:
    try:
        return bucket.files[path]
    except KeyError:
        raise HTTPException(404, f"no file {path!r} in {bucket.uri}") from None


def _public(bucket: Bucket) -> dict[str, object]:
    return {"id": bucket.id, "name": bucket.name, "uri": bucket.uri,
            "private": bucket.credentials_id is not None, "hidden": bucket.hidden}


DL = "/orgs/{org_id}/workspaces/{workspace_id}/data-links"

routes = [
    Route(DL, add_bucket, methods=["POST"]),
    Route(f"{DL}/{{bucket_id}}", edit_bucket, methods=["PUT"]),
    Route(f"{DL}/{{bucket_id}}", delete_bucket, methods=["DELETE"]),
    Route(f"{DL}/{{bucket_id}}/hide", hide_bucket, methods=["POST"]),
    Route(f"{DL}/{{bucket_id}}/show", show_bucket, methods=["POST"]),
    Route(f"{DL}/{{bucket_id}}/files/{{path:path}}", upload_file, methods=["PUT"]),
    Route(f"{DL}/{{bucket_id}}/files/{{path:path}}", download_file, methods=["GET"]),
    Route(f"{DL}/{{bucket_id}}/preview/{{path:path}}", preview_file, methods=["GET"]),
]
