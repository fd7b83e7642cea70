"""``CollectorSink``'s token and TLS options, checked at construction against its URL:
one that would be ignored, or fail only at the first connection (every batch then
spooled or dropped as undeliverable), is refused here, saying what to write."""

from __future__ import annotations

import os
import ssl

from .._options import check_flags
from ..errors import AuditArgumentTypeError, AuditConfigurationError
from ..wire import token_is_unclean
from .endpoint import Endpoint, verifying_context


def check_token(endpoint: Endpoint, token: str | None) -> None:
    if token is not None:
        try:
            token.encode("utf-8")  # sent in the hello: checked now, not at each send
        except (AttributeError, UnicodeEncodeError):
            raise AuditConfigurationError(
                "token must be text that UTF-8 can carry (from os.environ, a byte that "
                "is not UTF-8 arrives as a lone surrogate): check the variable that "
                "holds it") from None
        if token_is_unclean(token):  # not shown: it is a secret
            raise AuditConfigurationError(
                "token has surrounding whitespace or a control character (a newline kept "
                "from the file it was read from?), which the collector's token never "
                "has: pass it stripped, token=open(path).read().strip()")
    if endpoint.scheme == "tcp" and not token:
        raise AuditConfigurationError(
            f"{endpoint} needs token=...: the collector refuses TCP clients "
            f"without its shared token")


def tls_context(endpoint: Endpoint, tls: bool | ssl.SSLContext,
                tls_ca: str | os.PathLike[str] | None) -> ssl.SSLContext | None:
    """The context to connect with, or None (no TLS)."""
    if not isinstance(tls, ssl.SSLContext):
        check_flags(tls=tls)
    if tls_ca is not None:
        _check_ca_path(tls_ca)
    has_ca = tls_ca is not None
    if endpoint.scheme != "tcp":
        if tls is not False or has_ca:  # was ignored: the socket is local, in clear
            raise AuditConfigurationError(
                f"{endpoint} is a unix socket, which TLS does not apply to (only its "
                f"file's permissions guard it): drop tls= and tls_ca=, or connect "
                f"with tcp://host:port")
        return None
    if has_ca and tls is not True:  # was ignored: the system's CAs, or the context's
        raise AuditConfigurationError(
            "tls_ca= is read with tls=True only: pass tls=True as well"
            if tls is False else
            "tls_ca= is not read when tls= is an ssl.SSLContext: load the CA into "
            "the context (context.load_verify_locations(cafile)) and drop tls_ca=")
    if isinstance(tls, ssl.SSLContext):
        return tls
    if not tls:
        if not endpoint.loopback:
            raise AuditConfigurationError(
                f"{endpoint} is not on loopback: pass tls=True (and tls_ca= for a "
                f"private CA) so the token and the events are not sent in clear")
        return None
    try:
        return verifying_context(os.fspath(tls_ca) if tls_ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise AuditConfigurationError(
            f"tls_ca={tls_ca!r} cannot be used as the CA bundle ({why}): give a "
            f"PEM file of CA certificates") from None


def _check_ca_path(tls_ca: object) -> None:
    """``tls_ca`` names a file. ``''`` (an unset variable read with a default of '',
    ``os.environ.get("AUDIT_CA", "")``) was taken as no CA: the system's CAs, where a
    private CA was meant, and the first connection failed, its batches spooled."""
    text = os.fspath(tls_ca) if isinstance(tls_ca, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise AuditArgumentTypeError(
            f"tls_ca must be the path (a str or a Path) of a PEM file of CA certificates, "
            f"or None for the system's CAs; got {tls_ca!r:.80}")
    if not text.strip():
        raise AuditConfigurationError(
            f"tls_ca={tls_ca!r} names no file: pass the path of the PEM file of the CA "
            f"that signed the collector's certificate, or leave tls_ca out (None) to "
            f"verify it against the system's CAs")
