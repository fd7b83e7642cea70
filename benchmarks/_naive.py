"""The capture a user would write without this library: a ``BaseHTTPMiddleware`` that
builds the same schema-v1 event dict after the response and enqueues it the same way
(a ``BatchingQueue`` whose worker serializes and writes). Naive but reasonable: it
audits only routes it knows, only successful responses, and takes the target from the
path parameters the router matched."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp


class NaiveAuditMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: ASGIApp, *, submit: Callable[[dict[str, Any]], object],
                 routes: Mapping[Callable[..., Any], tuple[str, str]]) -> None:
        super().__init__(app)
        self.submit = submit
        #: endpoint function -> (event type, path parameter holding the target)
        self.routes = routes

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        audit = self.routes.get(request.scope.get("endpoint"))  # type: ignore[arg-type]
        if audit is not None and response.status_code < 400:
            event_type, param = audit
            span = trace.get_current_span().get_span_context()
            user = request.scope.get("user")
            client = request.client
            self.submit({
                "v": 1,
                "id": str(uuid.uuid4()),
                "type": event_type,
                "target": str(request.path_params.get(param, "")),
                "principal": str(getattr(user, "identity", "")) if user else "",
                "status": "",
                "org_id": "",
                "org_name": "",
                "workspace_id": "",
                "workspace_name": "",
                "client_ip": client.host if client else "",
                "created": datetime.now(UTC).isoformat(timespec="microseconds")
                .replace("+00:00", "Z"),
                "trace_id": f"{span.trace_id:032x}" if span.is_valid else "",
                "span_id": f"{span.span_id:016x}" if span.is_valid else "",
            })
        return response
