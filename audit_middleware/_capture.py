"""What the ASGI and WSGI middlewares share: the app they wrap and how they capture."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from .client_ip import ForwardedHeader, TrustedProxies
from .context import CaptureConfig, PrincipalResolver, Resolver
from .denials import checked_denied_event
from .errors import AuditConfigurationError

App = TypeVar("App")

#: The body of the 503 a ``fail_closed`` request is answered with when its events were
#: not durably recorded in time.
UNAVAILABLE_BODY = b"Service Unavailable: the action could not be recorded in the audit log\n"


class CapturingMiddleware(Generic[App]):
    """The constructor of ``AuditMiddleware`` and ``WSGIAuditMiddleware``: one place
    for their options, so that the two can never accept different ones."""

    def __init__(
        self,
        app: App,
        *,
        trusted_proxies: Iterable[str] = (),
        forwarded_header: ForwardedHeader = "x-forwarded-for",
        principal: PrincipalResolver | None = None,
        org: Resolver | None = None,
        workspace: Resolver | None = None,
        denied_event: str | None = None,
    ) -> None:
        if not callable(app):  # else the TypeError came at every request
            raise AuditConfigurationError(
                f"{type(self).__name__} wraps the application (a callable), got {app!r}: "
                f"give the application first, {type(self).__name__}(app, ...)")
        self.app = app
        self.config = CaptureConfig(
            trusted_proxies=TrustedProxies(trusted_proxies),
            forwarded_header=forwarded_header,
            principal=principal,
            org=org,
            workspace=workspace,
            # The event type recorded for a request answered 401 or 403 (``denials``).
            denied_event=checked_denied_event(denied_event),
        )
