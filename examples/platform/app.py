"""``create_app()``: the example platform as a Starlette app, audited end to end.

Middleware, outermost first: ``AuditMiddleware`` (request context: client IP behind the
configured trusted proxies, organization and workspace from the path, named by the
store), then ``AuthenticationMiddleware`` (``scope["user"]``, which is where the audit
principal comes from). Handlers are decorated with ``@audited``; the backend's own work
is emitted as ``system`` (see ``jobs.py`` and ``vault.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from audit_middleware import AuditMiddleware, Sink, configure, path_param, register_resource
from audit_middleware.client_ip import ForwardedHeader, TrustedProxies

from .auth import BearerTokenBackend, on_auth_error, seed_demo_users
from .jobs import RunBackend
from .routes import accounts, data_explorer, orgs, resources, runs
from .store import NotFound, Store
from .vault import Vault

#: The platform's own event type for a request answered 401 or 403: a bad token, a
#: signed-in user asking for what only root may do.
REQUEST_DENIED = "request_denied"

#: Largest request body (a file upload, in practice); bigger ones get a 413.
MAX_BODY = 1024 * 1024


def create_app(
    *,
    sink: Sink | None = None,
    trusted_proxies: Iterable[str] = (),
    forwarded_header: ForwardedHeader = "x-forwarded-for",
    jobs_interval: float | None = None,
    demo_users: bool = True,
) -> Starlette:
    """Build the platform. ``sink``: where audit events go (configured process-wide;
    leave None when the caller configured one, or in tests under
    ``capture_audit_events()``). ``jobs_interval``: seconds between run-backend steps,
    None to step only on ``POST /admin/jobs/tick``."""
    proxies = list(trusted_proxies)
    # Starlette builds middleware on the first request; a bad proxy entry should fail
    # here, where the caller can see it, not at server start-up.
    TrustedProxies(proxies)
    if sink is not None:
        configure(sink=sink)
    register_resource("request", {"denied": REQUEST_DENIED})  # again: a no-op
    store = Store()
    if demo_users:
        seed_demo_users(store)
    vault = Vault(store)
    jobs = RunBackend(store, vault)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(jobs.run_forever(jobs_interval)) if jobs_interval else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if sink is not None:
                sink.flush(timeout=5.0)

    app = Starlette(
        routes=[*accounts.routes, *orgs.routes, *resources.routes, *runs.routes,
                *data_explorer.routes],
        middleware=[
            Middleware(
                AuditMiddleware,
                trusted_proxies=proxies,
                forwarded_header=forwarded_header,
                org=path_param("org_id", lookup=store.name_of),
                workspace=path_param("workspace_id", lookup=store.name_of),
                denied_event=REQUEST_DENIED,
            ),
            Middleware(AuthenticationMiddleware, backend=BearerTokenBackend(store),
                       on_error=on_auth_error),
        ],
        exception_handlers={HTTPException: _http_error, NotFound: _not_found},
        lifespan=lifespan,
        max_body_size=MAX_BODY,
    )
    app.state.store = store
    app.state.vault = vault
    app.state.jobs = jobs
    return app


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                        headers=exc.headers)


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=404)
