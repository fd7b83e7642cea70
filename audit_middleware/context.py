"""The per-request audit context, kept in a contextvar by the ASGI and WSGI middlewares.

Setting it costs one small object per request; everything else (client IP, principal,
organization, workspace) is resolved lazily, the first time an event of the request
needs it, and cached. Resolving late also means it sees what inner middleware and the
router added to the scope (``scope["user"]`` from Starlette's AuthenticationMiddleware,
``scope["path_params"]``), whichever order the middlewares were installed in.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import re
import uuid
import weakref
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from ._sync_only import refuse_async
from ._wsgi_unix import ASK_ON_ITS_OWN_THREAD
from ._wsgi_unix import on_other_socket as _wsgi_other_socket
from ._wsgi_unix import on_unix_socket as _wsgi_unix_socket
from .client_ip import ForwardedHeader, Resolution, TrustedProxies, resolve_client_ip
from .errors import AuditConfigurationError

log = logging.getLogger("audit_middleware")

#: A resolver returns an id, an ``(id, name)`` pair, or None (not known for this request).
Resolved = str | tuple[str, str] | None
Resolver = Callable[["RequestContext"], Resolved]
PrincipalResolver = Callable[["RequestContext"], str | None]


def asgi_peer(scope: Mapping[str, Any]) -> Any:
    """The host of ``scope["client"]`` as the server hands it over (normally a str), or
    "" for a peer without an address. ASGI gives the client's port as an int; granian,
    outside the spec, gives ports as text and a unix socket's peer as (the path the
    connecting process bound its own socket to, "0"): any text a local process likes,
    ``10.0.0.1`` too, beside a server of (its socket's path, "0"). That peer has no
    address. Nor has (a host, the int 0) beside that server: granian's
    ``wrap_asgi_with_proxy_headers`` believing such a path (``127.0.0.1``, its default)
    and naming the client that process chose. Elsewhere port 0 is kept: Mangum's client
    is (its address, 0). The check costs a spec-following server one type test and
    one truth test (``emitter.request_fields``)."""
    client = scope.get("client")
    if not client:
        return ""
    try:
        port = client[1]
        if type(port) is int:
            return client[0] if port or not _granian_unix_server(scope.get("server")) else ""
        return "" if _asgi_unix_server(scope.get("server")) else client[0]
    except (TypeError, IndexError, KeyError):  # outside the spec: its first item, if any
        return client[0] if isinstance(client, (tuple, list)) and client else ""


def _asgi_unix_server(server: Any) -> bool:
    """Whether ASGI's ``scope["server"]`` is a unix socket's: [path, None] (the spec),
    (path, "0") (granian), or none given. Not an int 0: Mangum takes the server's port
    from the request's Host header, which the client writes."""
    try:
        return not server or server[1] is None or server[1] == "0"
    except (TypeError, IndexError, KeyError):
        return False


def _granian_unix_server(server: Any) -> bool:
    """Whether ``scope["server"]`` is granian's on a unix socket: (its path, "0")."""
    try:
        return bool(server) and server[1] == "0"
    except (TypeError, IndexError, KeyError):
        return False


#: Where Werkzeug's ``ProxyFix`` keeps the environ values it replaced.
_PROXY_FIX_ORIGINAL = "werkzeug.proxy_fix.orig"


def _server_remote_addr(environ: Mapping[str, Any]) -> Any:
    """``REMOTE_ADDR`` as the server handed it over, read as the middleware is called.
    Werkzeug's ``ProxyFix`` (Flask's documented proxy set-up) puts a hop of the
    request's X-Forwarded-For there, counted from the right whoever sent it: a direct
    client names its own address, or a trusted proxy's, whose header trusted_proxies
    then walks. One that ran before the middleware keeps what it replaced; one that runs
    after it (or any wrapper or Django middleware editing the environ) edits it in place,
    so it is read now, not at the first event. A ``ProxyFix`` inside another one keeps
    the outer one's hop as its original: a middleware called before the inner one reads
    past it, one called inside both cannot (docs/record.md)."""
    original = environ.get(_PROXY_FIX_ORIGINAL)
    if isinstance(original, Mapping) and "REMOTE_ADDR" in original:
        return original["REMOTE_ADDR"]
    return environ.get("REMOTE_ADDR")


def _wsgi_peer(environ: Mapping[str, Any] | None, remote_addr: Any) -> str:
    """The peer of a request whose server handed over ``remote_addr``."""
    if not environ:
        return ""
    if remote_addr != environ.get("REMOTE_ADDR"):
        environ = {**environ, "REMOTE_ADDR": remote_addr}  # as the unix checks must see it
    if _wsgi_unix_socket(environ):
        return ""
    return str(remote_addr or "")


@dataclass(frozen=True)
class CaptureConfig:
    """What a middleware was configured with; shared by all its requests."""

    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)
    forwarded_header: ForwardedHeader = "x-forwarded-for"
    principal: PrincipalResolver | None = None
    org: Resolver | None = None
    workspace: Resolver | None = None
    #: The event type a request answered 401 or 403 is recorded as (``denials``).
    denied_event: str | None = None
    #: The configuration of a request another audit middleware was already capturing
    #: (``within``): its client address is the enclosing request's unless this
    #: middleware was given trusted proxies of its own (``address_outside``).
    nested: bool = field(default=False, repr=False)
    address_outside: bool = field(default=False, repr=False)

    #: Whether ``@audited`` has work to do before the handler runs (derived).
    before_handler: bool = field(init=False, default=False)
    #: No resolver and no trusted proxy, not nested (derived): a request's fields come
    #: straight from its scope, the per-event fast path (``emitter.request_fields``).
    plain: bool = field(init=False, default=False)
    #: ``within``'s results, by the enclosing configuration's id: (it, the result).
    _within: dict[int, tuple[weakref.ref[CaptureConfig], CaptureConfig]] = field(
        init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "before_handler",
                           self.org is not None or self.workspace is not None)
        object.__setattr__(self, "plain", not self.trusted_proxies and self.principal is None
                           and self.org is None and self.workspace is None
                           and not self.nested)
        if isinstance(self.forwarded_header, str):
            # Header names are case-insensitive: "X-Forwarded-For", as it is usually
            # written, names the same header.
            object.__setattr__(self, "forwarded_header", self.forwarded_header.lower())
        if self.forwarded_header not in ("x-forwarded-for", "forwarded"):
            raise AuditConfigurationError(
                f"forwarded_header must be 'x-forwarded-for' or 'forwarded', "
                f"not {self.forwarded_header!r}: name the header your proxies append to"
            )
        for name in ("principal", "org", "workspace"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise AuditConfigurationError(
                    f"{name} must be a callable taking the RequestContext, got {value!r}"
                )
            refuse_async(f"the {name}= resolver", value)

    def within(self, enclosing: CaptureConfig) -> CaptureConfig:
        """This middleware's configuration for a request ``enclosing``'s middleware
        captures too (a mounted sub-app with an audit middleware of its own): each
        option left at its default is the enclosing one's, each one given wins. Its own
        ``denied_event`` stays its own: the outermost middleware that records denials
        records a request's (``denials.on_denied``). Made once per pair."""
        key = id(enclosing)
        made = self._within.get(key)
        if made is not None and made[0]() is enclosing:
            return made[1]
        # The proxies and the header they append are one statement: trusting this one's
        # proxies for the enclosing one's header would believe a header those proxies
        # pass through from the client untouched. Without proxies of its own, the
        # enclosing middleware sits closer to the network and decides the address.
        address = self if self.trusted_proxies else enclosing
        result = dataclasses.replace(
            self,
            trusted_proxies=address.trusted_proxies,
            forwarded_header=address.forwarded_header,
            principal=enclosing.principal if self.principal is None else self.principal,
            org=enclosing.org if self.org is None else self.org,
            workspace=enclosing.workspace if self.workspace is None else self.workspace,
            nested=True,
            address_outside=address is enclosing)
        # Held weakly, and dropped with it: apps built per test or per request around one
        # long-lived sub-app would otherwise keep every enclosing configuration (and the
        # resolvers' closures) alive in the sub-app's.
        self._within[key] = (weakref.ref(enclosing), result)
        weakref.finalize(enclosing, self._within.pop, key, None)
        return result


class RequestContext:
    """One request as the audit layer sees it: an ASGI ``scope`` or a WSGI ``environ``."""

    __slots__ = (
        "_enclosing",
        "_org",
        "_workspace",
        "_wsgi_peer",
        "_wsgi_remote_addr",
        "config",
        "environ",
        "failed_status",
        "failures",
        "fields",
        "principal_override",
        "scope",
        "status_code",
        "view_args",
    )

    #: The HTTP status of the failure event the request's last ``@audited`` outcome
    #: recorded (403 for ``failed: HTTP 403``); None when it recorded one without a
    #: status (``failed: ValueError``), or an ``@audited`` call around that failure
    #: returned since (its handler caught it). A denial answered with that very status
    #: is not recorded again (``denials``). An exception passing through an
    #: ``@audited`` that records no failure keeps it: most often the very exception
    #: whose failure was recorded, and the request's answer; so does an ``@audited``
    #: call made after it (a background task, an ``after_request`` hook). A failure
    #: recorded once the response has started (``status_code`` set: a background task,
    #: a streamed body, a Flask teardown) leaves it as it was: the answer is decided.
    #: Unset until an ``@audited`` call records a failure, and read with ``getattr``.
    failed_status: int | None
    #: The context of the audit middleware that encloses this request's (``nest_in``).
    #: Unset under no other one (most requests: not set, it costs them nothing), and read
    #: only where ``config.address_outside`` says it is set.
    _enclosing: RequestContext
    #: A WSGI request's ``REMOTE_ADDR`` as the server gave it (``_server_remote_addr``),
    #: read as the middleware is called. Unset for an ASGI request: it costs it nothing.
    _wsgi_remote_addr: Any

    def __init__(
        self,
        config: CaptureConfig,
        scope: MutableMapping[str, Any] | None = None,
        environ: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.scope = scope
        self.environ = environ
        #: The response status, observed by the middleware (None until it starts).
        self.status_code: int | None = None
        # ``failed_status`` is left unset: it costs a request nothing until a failure.
        #: The failure events ``@audited`` recorded in the request: an ``@audited`` call
        #: that returns clears ``failed_status`` only if one was recorded while it ran.
        self.failures = 0
        #: Set by :func:`set_principal`; wins over every resolver.
        self.principal_override: str | None = None
        #: Path parameters a framework passed to the view as keyword arguments (set by
        #: ``@audited``): WSGI, and ASGI frameworks whose router puts none in the scope
        #: (Django).
        self.view_args: Mapping[str, Any] | None = None
        #: The request's resolved, capped record fields: computed for its first event
        #: (``emitter.request_fields``) and reused by every later one.
        self.fields: tuple[str, str, str, str, str, str, str] | None = None
        #: Cached; a ``_Provisional`` pair when resolved before the path parameters were
        #: known (``params_known``), which ``forget_early`` drops.
        self._org: tuple[str, str] | None = None
        self._workspace: tuple[str, str] | None = None
        #: A WSGI request's ``peer``, once known (None: not yet asked). Asked now where
        #: only the server's own thread can answer (it runs ``__init__``), not by the
        #: first event, which may be emitted on another thread.
        self._wsgi_peer: str | None = None
        if environ is not None:
            self._wsgi_remote_addr = _server_remote_addr(environ)
            if ASK_ON_ITS_OWN_THREAD in environ:
                self._wsgi_peer = _wsgi_peer(environ, self._wsgi_remote_addr)

    def nest_in(self, enclosing: RequestContext) -> RequestContext | None:
        """``enclosing`` is another audit middleware's context, which it had set when
        this request's middleware was called. For the same request (a mounted sub-app
        with a middleware of its own) the options this one was left at their default are
        that one's (``CaptureConfig.within``), and it is returned. A request the app
        makes to itself in-process (httpx's ASGITransport, a test client in a handler)
        is another request, with its own peer, headers and credentials: its own, and
        None is returned. Called only under another context: a lone middleware pays for
        nothing of it but ``enclosing_context()``."""
        if not self._same_request(enclosing):
            return None
        self._enclosing = enclosing
        self.config = self.config.within(enclosing.config)
        if self.principal_override is None:  # set_principal() between the two
            self.principal_override = enclosing.principal_override
        return enclosing

    def _same_request(self, other: RequestContext) -> bool:
        """Whether ``other`` sees this very request. A router hands a mounted sub-app the
        scope (environ) it got, updated in place (Starlette, Werkzeug's dispatcher), or a
        copy sharing its headers list (its ``wsgi.input``); a request of its own has its
        own. A WSGI sub-app under an ASGI app (a WSGI adapter's mount) is the same one."""
        if self.scope is not None and other.scope is not None:
            return (other.scope is self.scope
                    or other.scope.get("headers") is self.scope.get("headers", ()))
        if self.environ is not None and other.environ is not None:
            return (other.environ is self.environ
                    or other.environ.get("wsgi.input") is self.environ.get("wsgi.input", ()))
        return True

    @property
    def addressed(self) -> RequestContext:
        """The context whose peer and forwarding header give the request's client
        address: the outermost enclosing one, unless a middleware on the way in was given
        trusted proxies of its own (``CaptureConfig.address_outside``)."""
        ctx = self
        while ctx.config.address_outside:
            ctx = ctx._enclosing
        return ctx

    # -- raw request data ---------------------------------------------------------------
    @property
    def peer(self) -> str:
        """The socket peer's address as the server hands it over; empty when it has none
        (a unix socket peer: ``on_unix_socket``)."""
        if self.scope is not None:
            return str(asgi_peer(self.scope))
        if self._wsgi_peer is None:
            self._wsgi_peer = _wsgi_peer(self.environ,
                                         getattr(self, "_wsgi_remote_addr", None))
        return self._wsgi_peer

    @property
    def on_unix_socket(self) -> bool:
        """Whether the request came over a unix socket, as far as the server tells: no
        peer address, and (ASGI) no listening port. uvicorn on TCP hands over no peer
        either (``scope["client"]`` None) for a client that sent its request and reset
        the connection before the server asked for its address; its ``scope["server"]``
        still names the TCP port, and such a peer is no unix socket peer: trusting it as
        one would believe that client's own forwarding header. So is a WSGI one whose
        server says its connection is TCP (gunicorn behind the PROXY protocol)."""
        if self.peer:
            return False
        if self.scope is not None:
            return _asgi_unix_server(self.scope.get("server"))
        environ = self.environ
        if not environ:
            return False
        return not _wsgi_other_socket(environ)

    @property
    def path_params(self) -> Mapping[str, Any]:
        scope = self.scope
        if scope is not None and (self.view_args is None or "path_params" in scope):
            return scope.get("path_params") or {}
        return self.view_args or {}

    @property
    def params_known(self) -> bool:
        """Whether the path parameters are known yet: once the router has matched
        (Starlette, ``scope["path_params"]``), once ``@audited`` has the view's keyword
        arguments (WSGI, and Django under ASGI, whose router puts none in the scope:
        ``view_args``). An event emitted before (an outer middleware, a Flask
        ``before_request`` hook) resolves without them."""
        if self.scope is not None and "path_params" in self.scope:
            return True
        return self.view_args is not None

    def forget_early(self) -> None:
        """Drop an organization and workspace resolved before the path parameters were
        known, and the record fields made from them, so that the next event resolves
        them again, with the parameters (``@audited`` calls it before its handler).
        What was resolved with them stays: a handler that deletes its workspace is
        still recorded with the name it had."""
        if not self.params_known:  # still not: nothing to resolve them with
            return
        early = False
        if type(self._org) is _Provisional:
            self._org, early = None, True
        if type(self._workspace) is _Provisional:
            self._workspace, early = None, True
        if early:
            self.fields = None

    def header(self, name: str) -> str | None:
        """All values of header ``name`` joined by ``, `` (as RFC 9110 combines them)."""
        name = name.lower()
        if self.scope is not None:
            raw = name.encode("latin-1")
            values = [v.decode("latin-1") for k, v in self.scope.get("headers", ()) if k == raw]
            return ", ".join(values) if values else None
        if self.environ is not None:
            value = self.environ.get("HTTP_" + name.upper().replace("-", "_"))
            return str(value) if value is not None else None
        return None

    # -- resolved (org and workspace cached: they are resolved before the handler runs) --
    def resolution(self) -> Resolution:
        if self.config.address_outside:
            return self.addressed.resolution()
        cfg = self.config
        peer = self.peer
        if not peer and not self.on_unix_socket:
            return Resolution("", "")  # no address, yet no unix socket: nothing vouches
        forwarded = self.header(cfg.forwarded_header) if cfg.trusted_proxies else None
        return resolve_client_ip(peer, forwarded, cfg.trusted_proxies, cfg.forwarded_header)

    def principal(self) -> str:
        if self.principal_override is not None:
            return self.principal_override
        resolver = self.config.principal
        value = resolver(self) if resolver is not None else None
        if value is None:
            value = principal_from_user(self.scope.get("user") if self.scope else None)
        return _resolved("principal", value)

    def org(self) -> tuple[str, str]:
        if self._org is None:
            if self.params_known:
                self._org = _pair(self.config.org, self, "org")
            else:  # set first: a resolver that raises leaves it provisional too
                self._org = _NOT_YET
                self._org = _Provisional(_pair(self.config.org, self, "org"))
        return self._org

    def workspace(self) -> tuple[str, str]:
        if self._workspace is None:
            if self.params_known:
                self._workspace = _pair(self.config.workspace, self, "workspace")
            else:
                self._workspace = _NOT_YET
                self._workspace = _Provisional(
                    _pair(self.config.workspace, self, "workspace"))
        return self._workspace

    def resolve_or(self, what: str, fallback: Any) -> Any:
        """``self.<what>()``; a failing resolver is logged and gives ``fallback``, so the
        event is recorded without that field rather than lost."""
        try:
            return getattr(self, what)()
        except Exception:
            log.exception("audit: resolving %s failed; recording the event without it", what)
            return fallback


class _Provisional(tuple[str, str]):
    """An organization or workspace resolved before the request's path parameters were
    known (``RequestContext.params_known``): used until they are, then resolved again."""

    __slots__ = ()


_NOT_YET = _Provisional(("", ""))


def _pair(resolver: Resolver | None, ctx: RequestContext, what: str) -> tuple[str, str]:
    if resolver is None:
        return ("", "")
    value = resolver(ctx)
    if value is None:
        return ("", "")
    if isinstance(value, tuple):
        if len(value) != 2:
            raise TypeError(f"the {what} resolver must return an id, (id, name) or None, "
                            f"got a tuple of {len(value)}")
        return (_resolved(f"{what} id", value[0]), _resolved(f"{what} name", value[1]))
    return (_resolved(f"{what} id", value), "")


def _resolved(what: str, value: object) -> str:
    """A resolver's value as the record holds it: text, an int or a UUID (as for every
    field, ``sanitize.field_text``). Any other object is refused, not turned into its
    ``str()``: a user object's text can hold anything, secrets included."""
    if value is None:
        return ""
    if isinstance(value, str):
        return str.__str__(value)
    # The types' own text, never a subclass's __str__ (which could hold anything).
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__repr__(value)
    if isinstance(value, uuid.UUID):
        return uuid.UUID.__str__(value)
    raise TypeError(f"the {what} must be a str, int or UUID (an id), got "
                    f"{type(value).__name__}: return the id, not the object")


def principal_from_user(user: Any) -> str | None:
    """The id of a Starlette-style user (``scope["user"]``): its ``identity``, ``id`` or
    ``username``; None when unauthenticated or it has none. Never its ``display_name``,
    which its user can often change: a principal must name who acted, not what they
    call themselves (give a ``principal`` resolver for a user object of another shape)."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    for attribute in ("identity", "id", "username"):
        try:
            value = getattr(user, attribute)
        except (AttributeError, NotImplementedError):
            continue
        except Exception:  # an app's user object must not fail the audit of its request
            log.exception("audit: reading %s of the request's user failed", attribute)
            continue
        if value in (None, ""):
            continue
        try:
            return _resolved(f"user's {attribute}", value)
        except TypeError as exc:  # an object: its text could hold anything
            log.error("audit: %s; trying the next of identity, id, username", exc)
    return None


current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "audit_request_context", default=None
)
#: The context an enclosing audit middleware set for the request, read by a middleware
#: before it sets its own; None under no other one, the usual request, which pays only
#: this read (bound once: ~60 instructions less than ``token.old_value``, a generic
#: attribute lookup) and an identity test before ``RequestContext.nest_in``.
enclosing_context = current.get

#: ``RequestContext(config, scope)`` in two steps, as the middlewares build one per
#: request: without the class call's type-call machinery (~150 instructions), which pays
#: for that read.
new_context = object.__new__
init_context = RequestContext.__init__


def current_request() -> RequestContext | None:
    """The audit context of the request being handled, or None outside a request."""
    return current.get()


def set_principal(principal: str) -> None:
    """Name the acting user for the rest of this request, e.g. from a framework's own
    authentication (Django's ``request.user``, Flask-Login) or in a sign-in handler."""
    ctx = current.get()
    if ctx is None:
        raise AuditConfigurationError(
            "set_principal() needs a request context: install AuditMiddleware (ASGI) or "
            "WSGIAuditMiddleware, or pass principal= to emit() outside a request"
        )
    ctx.principal_override = _resolved("principal given to set_principal()", principal)
    ctx.fields = None  # later events of this request resolve again, with this principal


#: An HTTP header's name (RFC 9110 token): any other never arrives, and is never found.
_HEADER_NAME: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def checked_name(what: str, name: object, meaning: str,
                 lookup: object = None) -> str:
    """At configuration, what a resolver would otherwise fail on at each request (logged,
    the field left empty): a name that is no text, and a ``lookup`` that is no callable.
    Returns the name as a plain str: a str subclass (an ``enum.StrEnum`` member, as the
    catalogue takes for an event type) worked before this check, and must still."""
    if not isinstance(name, str) or not name:
        raise AuditConfigurationError(f"{what} takes {meaning} (a non-empty str), got {name!r}")
    if lookup is not None and not callable(lookup):
        raise AuditConfigurationError(
            f"{what} lookup= takes a callable given the id that returns its display name "
            f"(or None), got {lookup!r}")
    refuse_async(f"{what} lookup=", lookup)
    return str.__str__(name)


def path_param(name: str, *, lookup: Callable[[str], str | None] | None = None) -> Resolver:
    """A resolver taking an id from a path parameter, and its display name from
    ``lookup(id)`` when given: ``AuditMiddleware(app, org=path_param("org_id", ...))``.

    Under WSGI the path parameters are the keyword arguments of the ``@audited`` view: a
    value a Flask ``url_value_preprocessor`` pops never reaches it, and is not found here
    (resolve it from where the preprocessor put it instead, such as ``flask.g``)."""

    name = checked_name("path_param()", name, "a path parameter's name", lookup)

    def resolve(ctx: RequestContext) -> Resolved:
        value = ctx.path_params.get(name)
        if value is None:
            return None
        # A converter may put an object in the path parameters (a model looked up by
        # its id): its str() could hold anything, secrets included. Refused (logged,
        # the field left empty), as every resolver's value is.
        ident = _resolved(f"path parameter {name!r}", value)
        return (ident, (lookup(ident) or "") if lookup else "")

    return resolve


def header(name: str, *, lookup: Callable[[str], str | None] | None = None) -> Resolver:
    """A resolver taking an id from a request header. Use only for headers your own
    infrastructure sets (a gateway), never for one a client can choose. Under WSGI a
    header is read from ``HTTP_<NAME>``, where servers that keep underscore headers
    (wsgiref, cheroot, granian, uWSGI, gunicorn before 22) also put a client's
    ``X_Name``: a gateway that strips ``X-Name`` must drop underscore headers too, or
    the client names the value (docs/record.md)."""

    name = checked_name("header()", name, "a header's name", lookup)
    if not _HEADER_NAME.fullmatch(name):
        raise AuditConfigurationError(
            f"header({name!r}): a header's name is letters, digits and -_!#$%&'*+.^`|~, "
            f"e.g. 'X-Org-Id'")

    def resolve(ctx: RequestContext) -> Resolved:
        value = ctx.header(name)
        if not value:
            return None
        return (value, (lookup(value) or "") if lookup else "")

    return resolve
