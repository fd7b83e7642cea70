"""``@audited``: record an event when a handler succeeds.

Works on sync and async callables (Starlette endpoints, FastAPI path operations, Flask
and Django views) and keeps their signature (``functools.wraps`` sets ``__wrapped__``,
which FastAPI follows for dependency injection). A handler that raises records nothing,
or a failure event when ``record_failure=True``; the exception always propagates
unchanged. A handler that *returns* an error response (status >= 400) is a failure too:
a response object of the framework (Starlette, Werkzeug/Flask, Django) with that status,
Flask's ``(body, status)`` with an int or a status line (``"404 NOT FOUND"``), or a plain
body from a FastAPI handler that set the status on its injected ``response: Response``.
Any other result is a success, whatever it holds (a model with a ``status_code`` field of
its own is no response).

Under WSGI, and under ASGI for a framework whose router puts no ``path_params`` in the
scope (Django's ``get_asgi_application()``), path parameters are the view's keyword
arguments, which ``@audited`` hands to the request context before the handler runs (an organization or workspace resolved by
an earlier event of the request, without them, is resolved again). A value a Flask
``url_value_preprocessor`` pops from them never reaches the view, so ``path_param``
cannot see it: resolve it from where the preprocessor put it (``flask.g``), e.g.
``workspace=lambda ctx: g.get("workspace_id")``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType, FunctionType
from typing import Any, Final, TypeVar

import orjson

from . import _config
from ._decorator_order import reject_misordered
from ._sync_only import refuse_async
from .context import RequestContext, checked_name, current
from .emitter import emit, record_in_request
from .errors import AuditArgumentTypeError, AuditConfigurationError, AuditFieldError
from .wsgi import status_line_code

log = logging.getLogger("audit_middleware")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class AuditCall:
    """What a ``target``/``status``/``principal`` callable of ``@audited`` receives."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    result: Any = None
    exception: BaseException | None = None
    context: RequestContext | None = field(default=None)

    def param(self, name: str) -> Any:
        """A path parameter: from the handler's keyword arguments (FastAPI, Flask,
        Django), else the request's ``path_params`` (Starlette)."""
        if name in self.kwargs:
            return self.kwargs[name]
        if self.context is not None and name in self.context.path_params:
            return self.context.path_params[name]
        params = self._request_path_params()
        if params is not None and name in params:
            return params[name]
        # A name that differs from the route's ({item_id} and target="id") is the usual
        # cause: name the ones there are (built only when the name is missing).
        ctx = self.context
        known = ", ".join(sorted(ctx.path_params if ctx is not None and ctx.params_known
                                 else params if params is not None
                                 else self.kwargs)) or "none"
        raise KeyError(f"no path parameter {name!r} in this call; its path parameters: "
                       f"{known}")

    def _request_path_params(self) -> Mapping[str, Any] | None:
        """The ``path_params`` of a Starlette Request among the handler's arguments (no
        AuditMiddleware installed to put them in the context)."""
        for arg in self.args:
            params = getattr(arg, "path_params", None)
            if isinstance(params, Mapping):
                return params
        return None

    def result_value(self, key: str) -> Any:
        """``key`` of the handler's result: a mapping item, a JSON response body field
        (Starlette ``JSONResponse``, a Flask JSON response, ``(body, status)``) or an
        attribute."""
        return _lookup(_result_body(self.result), key)


Getter = Callable[[AuditCall], Any]


def from_param(name: str) -> Getter:
    """Take the value from path parameter ``name``."""
    name = checked_name("from_param()", name, "a path parameter's name")
    return lambda call: call.param(name)


def from_result(key: str) -> Getter:
    """Take the value from the handler's result (see :meth:`AuditCall.result_value`)."""
    key = checked_name("from_result()", key, "a key or attribute of the handler's result")
    return lambda call: call.result_value(key)


def _getter(spec: str | Getter | None, what: str) -> Getter | None:
    if spec is None:
        return None
    if callable(spec):
        refuse_async(f"the @audited {what}= getter", spec)
        return spec
    if isinstance(spec, str):
        return from_param(spec)
    raise AuditArgumentTypeError(
        f"@audited {what}= takes a path parameter's name (e.g. {what}='bucket_id'), "
        f"from_param(), from_result() or a callable receiving the AuditCall; got "
        f"{spec!r:.80} ({type(spec).__name__})"
    )


def _result_body(result: Any) -> Any:
    if isinstance(result, tuple) and result:  # Flask (body, status[, headers])
        result = result[0]
    body = getattr(result, "body", None)  # Starlette JSONResponse
    if isinstance(body, bytes) and "json" in str(getattr(result, "media_type", "")):
        return orjson.loads(body)
    content = getattr(result, "content", None)  # Django JsonResponse
    if isinstance(content, bytes) and "json" in str(
            getattr(result, "headers", {}).get("Content-Type", "")):
        return orjson.loads(content)
    get_json = getattr(result, "get_json", None)
    if callable(get_json):
        return get_json(silent=True)
    return result


def _lookup(body: Any, key: str) -> Any:
    if isinstance(body, Mapping):
        return body[key]
    return getattr(body, key)


#: The response classes of the frameworks ``@audited`` serves, by module and name: a
#: result is a response if one of them is in its class's MRO. Named, not imported: no
#: framework is a dependency, and an object of one that is not imported is no response.
_RESPONSE_BASES = frozenset({
    ("starlette.responses", "Response"),  # Starlette, FastAPI
    ("werkzeug.sansio.response", "Response"),  # Flask, Quart
    ("werkzeug.wrappers.response", "Response"),  # Werkzeug before its sansio split
    ("django.http.response", "HttpResponseBase"),  # Django
})
_STARLETTE_RESPONSE = frozenset({("starlette.responses", "Response")})
#: Verdicts of ``_is_response_type``: a handler returns a few result classes, over and over.
_response_types: dict[type, bool] = {}


def _derives_from(kind: object, bases: frozenset[tuple[str, str]]) -> bool:
    """Whether class ``kind`` has one of ``bases`` (module, qualified name) in its MRO."""
    return any((getattr(c, "__module__", None), getattr(c, "__qualname__", None)) in bases
               for c in getattr(kind, "__mro__", ()))


def _is_response_type(kind: type) -> bool:
    """Whether results of class ``kind`` are responses (an HTTP status of their own),
    not values that merely have a ``status_code`` (a model of an upstream check)."""
    verdict = _response_types.get(kind)
    if verdict is None:
        verdict = _derives_from(kind, _RESPONSE_BASES)
        if len(_response_types) < 4096:  # classes made per call must not grow it forever
            _response_types[kind] = verdict
    return verdict


#: Exceptions that are an HTTP answer, by module and name (as ``_RESPONSE_BASES``), and
#: where their status is: raised, they fail the request with it, as a returned response
#: would ("failed: HTTP 404" either way, not "failed: HTTPException").
_HTTP_EXCEPTIONS: Final = {
    ("starlette.exceptions", "HTTPException"): "status_code",  # Starlette, FastAPI
    ("werkzeug.exceptions", "HTTPException"): "code",  # Flask
}
_DJANGO_EXCEPTIONS: Final = {
    ("django.http.response", "Http404"): 404,
    ("django.core.exceptions", "PermissionDenied"): 403,
}


def _exception_status(exc: BaseException) -> int | None:
    for c in type(exc).__mro__:
        key = (str(getattr(c, "__module__", "")), str(getattr(c, "__qualname__", "")))
        attribute = _HTTP_EXCEPTIONS.get(key)
        if attribute is not None:
            return _status_value(getattr(exc, attribute, None))
        if key in _DJANGO_EXCEPTIONS:
            return _DJANGO_EXCEPTIONS[key]
    return None


def _status_value(status: Any) -> int | None:
    """An HTTP status as a handler gives it: an int (``HTTPStatus`` too) or a status
    line (Flask's ``"404 NOT FOUND"``, read as the WSGI middleware reads one)."""
    if isinstance(status, int) and not isinstance(status, bool):
        return int(status)
    return status_line_code(status) if isinstance(status, str) else None


def _response_params(func: Callable[..., Any]) -> tuple[str, ...]:
    """The parameters of ``func`` FastAPI fills with the request's ``Response`` (those
    annotated with a Starlette ``Response`` class): a handler that returns a plain body
    sets its status there (``response.status_code = 404``)."""
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return ()
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - a name not defined yet: the annotation's text
        hints = {}
    names = []
    for name, parameter in parameters.items():
        annotation = hints.get(name, parameter.annotation)
        if (isinstance(annotation, str) and "Response" in annotation) or (
                isinstance(annotation, type) and _derives_from(annotation, _STARLETTE_RESPONSE)):
            names.append(name)
    return tuple(names)


def _injected_status(kwargs: Mapping[str, Any], names: tuple[str, ...]) -> int | None:
    """The status a handler set on the ``Response`` FastAPI passed it (None while unset:
    FastAPI hands it over with ``status_code = None``)."""
    for name in names:
        response = kwargs.get(name)
        if response is not None and _is_response_type(type(response)):
            code = _status_value(getattr(response, "status_code", None))
            if code is not None:
                return code
    return None


def _response_status(result: Any, kwargs: Mapping[str, Any] | None = None,
                     response_params: tuple[str, ...] = ()) -> int | None:
    """The HTTP status the handler's result gives, None when it gives none (a plain body,
    which the framework answers with 200 unless the handler set another)."""
    if isinstance(result, tuple) and len(result) >= 2:  # Flask (body, status[, headers])
        code = _status_value(result[1])
        if code is not None:
            return code
        result = result[0]  # (body, headers): the body's status, if it is a response
    if _is_response_type(type(result)):
        return _status_value(getattr(result, "status_code", None))
    if response_params and kwargs:
        return _injected_status(kwargs, response_params)
    return None


class _Recorder:
    """What one ``@audited`` records, prepared once at decoration time.

    The common shape (target from a path parameter, a constant status, everything else
    from the request context) takes a fast path straight to ``record_in_request``; any
    other shape builds an :class:`AuditCall` for its getters."""

    def __init__(self, event_type: str, getters: dict[str, Getter], record_failure: bool,
                 target_param: str | None, constant_status: str | None, simple: bool,
                 response_params: tuple[str, ...] = ()) -> None:
        self.event_type = event_type
        self.getters = getters
        self.record_failure = record_failure
        self.target_param = target_param
        self.constant_status = constant_status
        self.simple = simple
        #: The handler's parameters FastAPI passes its ``Response`` in (``_response_params``).
        self.response_params = response_params
        #: The response class the handler last returned: known without a lookup.
        self.response_kind: type | None = None
        self.said_outside = False  # the handler ran outside a request: logged once

    def success(self, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any,
                ctx: RequestContext | None, failures: int = 0) -> None:
        """Record the handler's success. It has already happened: a value the record
        cannot hold (a float path parameter, a date from a getter) must not turn it into
        a 500 with no event, so that field is left out, and logged (``record``). The
        ``try`` costs nothing until it catches (no extra call on the request path).
        ``failures``: ``ctx.failures`` when the call began."""
        if ctx is not None and ctx.failures != failures:
            # A failure an audited helper recorded while this call ran was caught by it:
            # no longer the request's answer (``_general`` sets one again if this call's
            # own outcome is a failure). One recorded before it began is left alone: a
            # call made after the handler answered (a background task, an after_request
            # hook) says nothing of that answer.
            ctx.failed_status = None
        try:
            if self.simple and ctx is not None:
                kind = type(result)
                # A response's status is its own; anything else (FastAPI's dict, a list,
                # None, a model with a status_code field of its own) has none: the status
                # is the one the handler set on FastAPI's injected Response, if any.
                if kind is dict or kind is list or result is None:
                    code = (_injected_status(kwargs, self.response_params)
                            if self.response_params else None)
                elif kind is self.response_kind:  # the response class it returned before
                    code = getattr(result, "status_code", None)
                elif kind is tuple:
                    return self._general(AuditCall(args, kwargs, result, None, ctx))
                elif _is_response_type(kind):
                    self.response_kind = kind
                    code = getattr(result, "status_code", None)
                elif self.response_params:
                    code = _injected_status(kwargs, self.response_params)
                else:
                    code = None
                if code is None or (type(code) is int and code < 400):
                    name = self.target_param
                    if name is None:
                        target = None
                    elif name in kwargs:
                        target = kwargs[name]
                    else:
                        params = ctx.path_params
                        if name not in params:
                            return self._general(AuditCall(args, kwargs, result, None, ctx))
                        target = params[name]
                    record_in_request(self.event_type, target, self.constant_status, ctx)
                    return None
            return self._general(AuditCall(args, kwargs, result, None, ctx))
        except AuditFieldError:
            # Only the fast path (a success) raises here: ``record`` leaves such a
            # field out itself, and keeps a failure's status.
            return self.record(AuditCall(args, kwargs, result, None, ctx), None)

    def _general(self, call: AuditCall) -> None:
        code = _response_status(call.result, call.kwargs, self.response_params)
        if code is not None and code >= 400:
            if self.record_failure:
                ctx = call.context
                if ctx is not None and ctx.status_code is None:  # not after it: ``failure``
                    ctx.failed_status = code  # this response may be a denial
                    ctx.failures += 1
                self.record(call, f"failed: HTTP {code}")
            return
        self.record(call, None)

    def failure(self, call: AuditCall, exc: BaseException) -> None:
        # The handler's exception must reach the caller unchanged: a failure to record
        # the failure is logged, never raised in its place.
        try:
            code = _exception_status(exc)
            ctx = call.context
            if ctx is not None and ctx.status_code is None:
                # The request's last outcome: a 403 it is answered with is this one's,
                # unless an @audited call around it returns (a handler that caught it).
                # Once the response has started (its status named: a background task,
                # a streamed body, a Flask teardown), a failure is no answer's.
                ctx.failed_status = code
                ctx.failures += 1
            self.record(call, f"failed: HTTP {code}" if code is not None
                        else f"failed: {type(exc).__name__}")
        except Exception:
            log.exception("audit: could not record the failure event")

    def record(self, call: AuditCall, failure: str | None) -> None:
        """Record the event (``failure``: its status, for a failure event). A value it
        cannot hold (a float path parameter, a date from a getter) is left out, and
        logged: the handler's work is done, and neither it nor the event may be lost to
        the record's field types."""
        fields: dict[str, Any] = {}
        for name, getter in self.getters.items():
            try:
                fields[name] = getter(call)
            except Exception as exc:  # noqa: BLE001 - a getter bug must not lose the event
                if failure is None:  # on failure a missing result is expected
                    log.error("audit: %s for %s could not be resolved (%r); recording "
                              "the event without it", name, self.event_type, exc)
        if failure is not None:
            fields["status"] = failure
        if call.context is None and "principal" not in fields:
            # No middleware around the app (or the handler called directly): emit() would
            # call it the application's own event, "system", and a user's action would
            # read as a background job's. Who acted is unknown: said so, and left empty.
            fields["principal"] = ""
            if not self.said_outside:
                self.said_outside = True
                log.error("audit: @audited(%r) ran outside a request, so the event has no "
                          "principal or client IP: install AuditMiddleware (ASGI) or "
                          "WSGIAuditMiddleware around the app (for a job, use "
                          "emit(), or pass principal=lambda call: \"system\")",
                          self.event_type)
        while True:
            try:
                emit(self.event_type, **fields)
                return
            except AuditFieldError as error:
                if fields.get(error.field) is None:  # not a value of ours (a resolver's)
                    log.error("audit: %s could not be recorded: %s", self.event_type, error)
                    return
                log.error("audit: %s; recording %s without it", error, self.event_type)
                # Outside a request a principal of None would make it the application's
                # own event ("system"): who acted is unknown, so it stays empty.
                fields[error.field] = ("" if error.field == "principal" and call.context is None
                                       else None)


#: Decorators listed after @audited in one method_decorator: more is not Django's.
_MAX_WRAPPERS: Final = 8


def _method_called(func: Any) -> Any:
    """The method when ``func`` is what Django's ``method_decorator`` decorates at each
    call: a new ``partial`` of it (``__wrapped__``: the method), or that partial wrapped
    (``functools.wraps``) by the decorators listed after ours; else None."""
    for _ in range(_MAX_WRAPPERS):
        if isinstance(func, functools.partial):
            return getattr(func, "__wrapped__", None)
        if not isinstance(func, FunctionType):
            return None
        func = getattr(func, "__wrapped__", None)
    return None


def audited(
    event_type: str,
    *,
    target: str | Getter | None = None,
    status: str | Getter | None = None,
    principal: Getter | None = None,
    org_id: Getter | None = None,
    org_name: Getter | None = None,
    workspace_id: Getter | None = None,
    workspace_name: Getter | None = None,
    record_failure: bool = False,
) -> Callable[[F], F]:
    """Record ``event_type`` each time the decorated handler succeeds.

    ``target``: a path parameter name, ``from_param(name)``, ``from_result(key)``, or a
    callable receiving the :class:`AuditCall`. ``status``: a constant string, or any of
    those getters. The other getters override what the request context would give.
    """
    _config.settings.catalogue.check(event_type)  # fail at import time, not per request
    if type(record_failure) is not bool:  # 'no' is truthy
        raise AuditArgumentTypeError(f"@audited record_failure must be True or False, "
                                     f"got {record_failure!r:.80}")
    getters: dict[str, Getter | None] = {
        "target": _getter(target, "target"),
        "status": (lambda call: status) if isinstance(status, str) else _getter(status, "status"),
        "principal": _getter(principal, "principal"),
        "org_id": _getter(org_id, "org_id"),
        "org_name": _getter(org_name, "org_name"),
        "workspace_id": _getter(workspace_id, "workspace_id"),
        "workspace_name": _getter(workspace_name, "workspace_name"),
    }
    overrides = (principal, org_id, org_name, workspace_id, workspace_name)
    simple = ((target is None or isinstance(target, str))
              and (status is None or isinstance(status, str))
              and all(o is None for o in overrides))

    #: Django's ``method_decorator`` applies this decorator again at every request, to
    #: a new ``partial`` of the same method (its ``__wrapped__``), or to the wrapper of
    #: that partial by the decorators listed after it: the recorder made for that method
    #: is reused, so a request does not inspect the signature again (~100 us) and what
    #: was said once (``said_outside``) stays said.
    method_recorders: dict[Any, _Recorder] = {}

    def prepare(func: Callable[..., Any], frame: FrameType | None) -> _Recorder:
        # Decorators apply bottom-up: above a route decorator, this would wrap a
        # function the framework already registered undecorated, and record nothing;
        # above a sign-in check, it would take its redirect for the view's success.
        reject_misordered(func, event_type, frame)
        return _Recorder(
            event_type,
            {name: g for name, g in getters.items() if g is not None},
            record_failure,
            target_param=target if isinstance(target, str) else None,
            constant_status=status if isinstance(status, str) else None,
            simple=simple,
            response_params=_response_params(func),
        )

    def recorder_for(func: Callable[..., Any], frame: FrameType | None) -> _Recorder:
        method = _method_called(func)
        if method is None:
            return prepare(func, frame)
        if not isinstance(func, functools.partial):
            # A wrapper made for this call: what it checks (a redirecting sign-in
            # check) depends on its closure, not only on its method. ~1 us.
            reject_misordered(func, event_type, None)
        recorder = method_recorders.get(method)
        if recorder is None:
            recorder = method_recorders.setdefault(method, prepare(method, None))
        return recorder

    def decorate(func: F) -> F:
        if not callable(func):  # else wrapped, and the TypeError came at each request
            raise AuditConfigurationError(
                f"@audited({event_type!r}) decorates a handler (a function or method), "
                f"got {func!r}")
        recorder = recorder_for(func, sys._getframe(1))
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                ctx = current.get()
                failures = 0
                if ctx is not None:
                    failures = ctx.failures
                    if ctx.config.before_handler or ctx.environ is not None:
                        _before_handler(ctx, kwargs)
                try:
                    result = await func(*args, **kwargs)
                except Exception as exc:
                    if record_failure:
                        recorder.failure(AuditCall(args, kwargs, None, exc, ctx), exc)
                    raise
                recorder.success(args, kwargs, result, ctx, failures)
                return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = current.get()
            failures = 0
            if ctx is not None:
                failures = ctx.failures
                if ctx.config.before_handler or ctx.environ is not None:
                    _before_handler(ctx, kwargs)
            try:
                result = func(*args, **kwargs)
            except Exception as exc:
                if record_failure:
                    recorder.failure(AuditCall(args, kwargs, None, exc, ctx), exc)
                raise
            recorder.success(args, kwargs, result, ctx, failures)
            return result

        return sync_wrapper  # type: ignore[return-value]

    return decorate


def _before_handler(ctx: RequestContext, kwargs: dict[str, Any]) -> None:
    scope = ctx.scope
    if (scope is None or "path_params" not in scope) and (kwargs or ctx.view_args is None):
        # WSGI frameworks, and Django under ASGI (its router puts no path_params in the
        # scope, as Starlette's does), pass path parameters as kwargs: from here on they
        # are known (an empty dict too: the view has none).
        ctx.view_args = kwargs
    # An event emitted earlier in the request (a before_request hook, a middleware)
    # resolved organization and workspace without the path parameters: again, with them.
    ctx.forget_early()
    # Resolve organization and workspace *before* the handler runs: a handler that
    # deletes its workspace must still be recorded with the workspace's name.
    ctx.resolve_or("org", None)
    ctx.resolve_or("workspace", None)
