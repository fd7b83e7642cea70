"""``@audited`` written above a route decorator instead of below it.

Decorators apply bottom-up: with ``@audited(...)`` above ``@app.get(...)``, the framework
registers the undecorated function, and ``@audited`` wraps it only afterwards. The route
never calls the wrapper, so every request goes unrecorded, and nothing says so.

Caught when ``@audited`` decorates: the routers and apps in the namespace it is applied
in (the module's globals, or the locals of a ``create_app()``) are asked whether they
already route to the very function being decorated. That costs a scan of that namespace
at import time, and nothing per request. A router reached only through an attribute
(``@self.router.get``) is not seen: the README says where ``@audited`` goes.

The frameworks are named by module and class, not imported (as
``decorator._RESPONSE_BASES`` names their responses): none is a dependency.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from types import FrameType
from typing import Any

from .errors import AuditConfigurationError

_STARLETTE_ROUTER = ("starlette.routing", "Router")  # FastAPI's APIRouter too
_STARLETTE_APP = ("starlette.applications", "Starlette")  # FastAPI too
_FLASK_APP = ("flask.sansio.app", "App")  # Flask, Quart
_FLASK_BLUEPRINT = ("flask.sansio.blueprints", "Blueprint")
_KINDS = frozenset({_STARLETTE_ROUTER, _STARLETTE_APP, _FLASK_APP, _FLASK_BLUEPRINT})

#: The router kind of each class met in a namespace (None: no router). A module's
#: globals are mostly functions, classes and modules: each class's MRO is walked once.
_kinds: dict[type, tuple[str, str] | None] = {}


def reject_if_routed(func: Callable[..., Any], event_type: str, frame: FrameType | None) -> None:
    """Raise when a router in ``frame``'s namespace routes to ``func`` itself: the
    route decorator ran before ``@audited(event_type)``, which would never be called."""
    if frame is None:
        return
    for name, router in _routers(frame):
        if any(endpoint is func for endpoint in _endpoints(router)):
            qualname = getattr(func, "__qualname__", repr(func))
            raise AuditConfigurationError(
                f"@audited({event_type!r}) is above the route decorator of {qualname}: "
                f"{name} ({type(router).__name__}) already routes to the undecorated "
                f"function, so its requests would record nothing. Put @audited(...) on the "
                f"line below {name}'s route decorator (@{name}.get(...), .post, .route...)"
            )


def _routers(frame: FrameType) -> Iterator[tuple[str, Any]]:
    """The routers and apps named in ``frame``'s locals and globals (one dict at a
    module's top level)."""
    namespaces: list[Mapping[str, Any]] = [frame.f_locals]
    if frame.f_globals is not frame.f_locals:
        namespaces.append(frame.f_globals)
    for namespace in namespaces:
        for name, value in list(namespace.items()):
            if _kind(type(value)) is not None:
                yield name, value


def _kind(cls: type) -> tuple[str, str] | None:
    if cls in _kinds:
        return _kinds[cls]
    kind = next((key for c in cls.__mro__
                 if (key := (str(getattr(c, "__module__", "")),
                             str(getattr(c, "__qualname__", "")))) in _KINDS), None)
    if len(_kinds) < 4096:  # classes made on the fly must not grow it forever
        _kinds[cls] = kind
    return kind


def _endpoints(router: Any) -> Iterable[Any]:
    """What ``router`` calls for its requests."""
    kind = _kind(type(router))
    if kind == _STARLETTE_APP:
        router = router.router
        kind = _STARLETTE_ROUTER
    if kind == _STARLETTE_ROUTER:
        return (getattr(route, "endpoint", None) for route in router.routes)
    if kind == _FLASK_APP:
        return list(router.view_functions.values())
    # A blueprint registers its views on an app later: each is held by the closure of
    # a deferred ``add_url_rule``.
    return (cell.cell_contents for deferred in router.deferred_functions
            for cell in (getattr(deferred, "__closure__", None) or ())
            if _filled(cell))


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True
