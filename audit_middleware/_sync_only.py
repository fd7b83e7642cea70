"""Refusing an ``async def`` where a plain callable is called: resolvers (``principal=``,
``org=``, ``workspace=``, ``lookup=``) and ``@audited`` getters run synchronously, even
under ASGI. An async one is called, never awaited: the field was left empty, and
"coroutine ... was never awaited" warned, at every request. Checked once, when
configured, never per request."""

from __future__ import annotations

import functools
import inspect

from .errors import AuditConfigurationError


def is_async(value: object) -> bool:
    """Whether calling ``value`` returns a coroutine: an ``async def`` (also bound, or in
    a ``functools.partial``), or an object whose ``__call__`` is one."""
    while isinstance(value, functools.partial):
        value = value.func
    if inspect.iscoroutinefunction(value):
        return True
    # An instance's bound __call__; a class's is type.__call__ (making one), not async.
    return (callable(value) and not isinstance(value, type)
            and inspect.iscoroutinefunction(value.__call__))


def refuse_async(what: str, value: object) -> None:
    """``AuditConfigurationError`` when ``value`` (given as ``what``) is async."""
    if is_async(value):
        name = getattr(value, "__qualname__", None) or type(value).__qualname__
        raise AuditConfigurationError(
            f"{what} {name} is async (an async def): it would be called and never "
            f"awaited, the field left empty at every request. Make it a plain def (resolvers "
            f"and getters run synchronously, under ASGI too); a value only an await can "
            f"get, get in the handler and record with emit(..., org_id=...) or "
            f"set_principal()")
