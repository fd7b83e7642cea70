"""``@audited`` written above a decorator it belongs below, caught as it decorates.

- **A route decorator.** Decorators apply bottom-up: with ``@audited(...)`` above
  ``@app.get(...)``, the framework registers the undecorated function, and ``@audited``
  wraps it only afterwards. The route never calls the wrapper, so every request goes
  unrecorded, and nothing says so. The routers and apps in the namespace ``@audited`` is
  applied in (the module's globals, or the locals of a ``create_app()``) are asked
  whether they already route to the very function being decorated. A router reached
  only through an attribute (``@self.router.get``) is not seen: the README says where
  ``@audited`` goes. A function already named there was not decorated in its
  definition: routed as it is, it may be audited for another route (only logged).
  What cannot be asked (a ``routes`` property that raises, an app whose ``__init__``
  has not run yet) is taken for no route: a check must not break the import.
- **A sign-in check that redirects.** Django's ``@login_required`` (and
  ``@permission_required``, ``@user_passes_test``) and Starlette's
  ``@requires(..., redirect=...)`` answer a refused request with a redirect to the
  sign-in page instead of running the view: around them, ``@audited`` would take that
  3xx for the view's success and record an action that never ran. (Starlette's
  ``@requires`` without ``redirect`` and Django's ``@permission_required(...,
  raise_exception=True)`` raise a 403, which ``@audited`` sees as a failure: they may
  stay below ``@audited``.) Both applied to a class-based view with Django's
  ``method_decorator``, on the same method, are seen at its first request instead,
  which then fails before the view runs: ``method_decorator`` decorates at each call.

Both cost a look at the namespace and the function when ``@audited`` decorates (at
import time; once per method through ``method_decorator``), nothing per request.
The frameworks are named by module and class, not imported (as
``decorator._RESPONSE_BASES`` names their responses): none is a dependency.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Mapping
from types import FrameType, FunctionType
from typing import Any

from .errors import AuditConfigurationError

log = logging.getLogger("audit_middleware")

_STARLETTE_ROUTER = ("starlette.routing", "Router")  # FastAPI's APIRouter too
_STARLETTE_APP = ("starlette.applications", "Starlette")  # FastAPI too
_FLASK_APP = ("flask.sansio.app", "App")  # Flask, Quart
_FLASK_BLUEPRINT = ("flask.sansio.blueprints", "Blueprint")
_KINDS = frozenset({_STARLETTE_ROUTER, _STARLETTE_APP, _FLASK_APP, _FLASK_BLUEPRINT})

#: The router kind of each class met in a namespace (None: no router). A module's
#: globals are mostly functions, classes and modules: each class's MRO is walked once.
#: Weak: a class made on the fly (each Mock has one, which holds the mock) must not be
#: kept alive by having been met here.
_kinds: weakref.WeakKeyDictionary[type, tuple[str, str] | None] = weakref.WeakKeyDictionary()


def reject_misordered(func: Callable[..., Any], event_type: str, frame: FrameType | None
                      ) -> None:
    """Raise when ``@audited(event_type)``, applied to ``func`` from ``frame``, is written
    above a decorator it belongs below."""
    redirecting = _redirecting_check(func)
    if redirecting is not None:
        raise AuditConfigurationError(
            f"@audited({event_type!r}) is above {redirecting} on "
            f"{getattr(func, '__qualname__', repr(func))}: a request it refuses is answered "
            f"with a redirect to the sign-in page, which @audited would record as the "
            f"view's success, an action that never ran. Put @audited(...) below it"
        )
    if frame is not None:
        _reject_if_routed(func, event_type, frame)


def _redirecting_check(func: Callable[..., Any]) -> str | None:
    """The sign-in check ``func`` is, when it answers a refused request with a redirect
    (its wrapper's module tells: ``functools.wraps`` copies ``__module__``, not
    ``__globals__``)."""
    module = _module_of(func)
    if module == _DJANGO_AUTH and _django_check_redirects(func):
        return "Django's @login_required (or @permission_required, @user_passes_test)"
    if module == "django.utils.decorators" and any(
            getattr(applied, "__module__", None) == _DJANGO_AUTH
            and _django_check_redirects(applied(_placeholder_view()))
            for applied in _free_variable(func, "decorators") or ()):
        # method_decorator(audited(...)) over a method_decorator(login_required): the
        # inner one's wrapper applies the check at each call. Seen at the first request
        # only (method_decorator decorates then), which fails before the view runs.
        # Each of its decorators is tried on a placeholder view, as method_decorator
        # does itself: login_not_required is of that module too, and redirects nothing.
        return ("Django's @login_required (or @permission_required, @user_passes_test) "
                "through method_decorator")
    if module == "starlette.authentication" and _free_variable(func, "redirect") is not None:
        return "Starlette's @requires(..., redirect=...)"
    return None


_DJANGO_AUTH = "django.contrib.auth.decorators"


def _django_check_redirects(wrapper: Any) -> bool:
    """Whether ``wrapper``, what a Django auth decorator returned, redirects a refused
    request: ``permission_required(..., raise_exception=True)`` raises PermissionDenied
    instead (a 403, a failure to @audited), and ``login_not_required`` wraps nothing."""
    if _module_of(wrapper) != _DJANGO_AUTH:
        return False
    return _free_variable(_free_variable(wrapper, "test_func"), "raise_exception") is not True


def _placeholder_view() -> Callable[..., Any]:
    def view(*args: Any, **kwargs: Any) -> None:  # login_not_required marks it: a new one
        return None

    return view


def _module_of(func: Any) -> Any:
    # A plain function only: a callable object's __getattr__ may answer anything.
    return func.__globals__.get("__name__") if isinstance(func, FunctionType) else None


def _free_variable(func: Any, name: str) -> Any:
    if not isinstance(func, FunctionType) or name not in func.__code__.co_freevars:
        return None
    cell = (func.__closure__ or ())[func.__code__.co_freevars.index(name)]
    return cell.cell_contents if _filled(cell) else None


def _reject_if_routed(func: Callable[..., Any], event_type: str, frame: FrameType) -> None:
    """Raise when a router in ``frame``'s namespace routes to ``func`` itself: the
    route decorator ran before ``@audited(event_type)``, which would never be called."""
    routers, defined_before = _scan(frame, func)
    for name, router in routers:
        if not _routes_to(router, func):
            continue
        qualname = getattr(func, "__qualname__", repr(func))
        if defined_before:
            # audited(...)(f) on a function already named here: no decorator syntax
            # (its function is named only after its decorators ran). The undecorated
            # route may be meant, with f audited for another route: said, not refused.
            log.warning("audit: %s (%s) already routes to %s undecorated: its requests "
                        "record no %s", name, type(router).__name__, qualname, event_type)
            continue
        raise AuditConfigurationError(
            f"@audited({event_type!r}) is above the route decorator of {qualname}: "
            f"{name} ({type(router).__name__}) already routes to the undecorated "
            f"function, so its requests would record nothing. Put @audited(...) on the "
            f"line below {name}'s route decorator (@{name}.get(...), .post, .route...)"
        )


def _scan(frame: FrameType, func: Callable[..., Any]) -> tuple[list[tuple[str, Any]], bool]:
    """The routers and apps named in ``frame``'s locals and globals (one dict at a
    module's top level), and whether ``func`` is itself named there."""
    namespaces: list[Mapping[str, Any]] = [frame.f_locals]
    if frame.f_globals is not frame.f_locals:
        namespaces.append(frame.f_globals)
    routers = []
    named = False
    for namespace in namespaces:
        for name, value in list(namespace.items()):
            named = named or value is func
            if _kind(type(value)) is not None:
                routers.append((name, value))
    return routers, named


def _routes_to(router: Any, func: Callable[..., Any]) -> bool:
    try:
        return any(endpoint is func for endpoint in _endpoints(router))
    except Exception:  # noqa: BLE001 - a subclass's routes property, an app whose
        # __init__ has not run yet: a check that cannot be made must not break the import
        return False


def _kind(cls: type) -> tuple[str, str] | None:
    try:
        if cls in _kinds:
            return _kinds[cls]
    except TypeError:  # a metaclass with __eq__ and no __hash__: not a framework's
        return None
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
