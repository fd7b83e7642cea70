"""The command line as a client of a running collector's query API: for what only the
process that owns the store may do (an acknowledgement of losses is recorded in the
store and applied by it). The other commands read the data directory's files.

The API is found as ``serve`` reads its options (``api_listen``, ``api_tls_cert``: flag,
environment, ``--config`` file), or given as ``--api-url``. The reader's token comes
from ``AUDIT_READER_TOKEN`` or a file, never from the command line (where ``ps`` shows
it to every user of the host).
"""

from __future__ import annotations

import http.client
import os
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from audit_middleware.shipper.endpoint import is_loopback, verifying_context
from audit_middleware.shipper.refusals import Remedies, refused_certificate

from .config import CollectorConfig
from .options import split_host_port
from .render import terminal_safe
from .token_files import TokenFileError, TokenFileKind, read_token_file

TOKEN_ENV: Final = "AUDIT_READER_TOKEN"
#: Seconds to wait for an answer: the store may wait up to 30 s for another
#: acknowledgement under way (``store_acknowledging.ACK_WAIT``) before it answers.
TIMEOUT: Final = 60.0
#: Bytes of an answer read at most (the API's answers to this client are a few
#: hundred): a host that is not the collector may send one without end.
MAX_ANSWER: Final = 1024 * 1024
#: What to change here when the API's certificate is refused.
_REMEDIES: Final = Remedies(
    server="the API's",
    trust=("set api_tls_cert (flag, environment or --config, as serve reads it) to the "
           "collector's certificate or its CA"),
    address="reach the API by one it holds (--api-url)")
#: A wildcard listen address, and the loopback address this host reaches it at.
_ANYWHERE: Final = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class ApiClientError(Exception):
    """The API could not be asked, or refused (the message says what to do).
    ``status``: the HTTP status of a refusal, None when there was no answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ApiAccess:
    url: str  # scheme://host:port, no trailing slash
    token: str
    tls_cert: Path | None = None  # trusted for https, besides the system's CAs


def base_url(config: CollectorConfig, given: str | None) -> str:
    """``given`` (``--api-url``), else the address ``serve`` listens on: on every address
    (0.0.0.0, ::) reached on loopback; https when it has a certificate."""
    if given:
        if not given.startswith(("http://", "https://")):
            raise ApiClientError(f"--api-url {given!r}: give a URL such as "
                                 f"http://127.0.0.1:8080")
        return _never_in_clear(given.rstrip("/"))
    if not config.api_listen:
        raise ApiClientError("api_listen is empty: this collector serves no API. Set "
                             "api_listen (and restart it), or give --api-url")
    host, port = split_host_port(config.api_listen)
    host = _ANYWHERE.get(host, host)
    scheme = "https" if config.api_tls_cert is not None else "http"
    return _never_in_clear(f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}")


def _never_in_clear(url: str) -> str:
    """``url``, unless it is plain http beyond loopback: serve refuses to serve its API
    there without TLS (reader tokens never in clear), and this command skips serve's
    checks of its options (``config.load(for_serve=False)``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        raise ApiClientError(
            f"{url} is plain http beyond loopback: the reader's token would go over the "
            f"network in clear. The collector serves its API there over TLS only: set "
            f"api_tls_cert as serve has it (flag, environment or --config), or give "
            f"--api-url https://...")
    return url


_READER_TOKEN_FILE: Final = TokenFileKind(
    name="the reader token file",
    renew="`audit-collector users remove` the reader and `add` it again, for a new token",
    instead=f"give --reader-token-file a file holding the token (or put it in {TOKEN_ENV})",
    source="as `audit-collector users add` printed it",
    create=("make a root reader's, readable by its owner alone: "
            "`(umask 077; audit-collector users add NAME --root > {path})` as the "
            f"collector's user (or put a root reader's token in {TOKEN_ENV})"))


def reader_token(token_file: Path | None) -> str:
    """A reader's token: from ``token_file``, else ``AUDIT_READER_TOKEN``."""
    if token_file is not None:
        try:
            token = read_token_file(token_file, _READER_TOKEN_FILE)
        except TokenFileError as exc:
            raise ApiClientError(str(exc)) from None
        return _one_token(token, f"the reader token file {token_file}")
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ApiClientError(f"a root reader's token is needed: put it in {TOKEN_ENV} or "
                             f"in a file given as --reader-token-file (a root reader is "
                             f"made with `audit-collector users add NAME --root`)")
    return _one_token(token, TOKEN_ENV)


def _one_token(token: str, where: str) -> str:
    """``token``, if it can be one (visible ASCII, no space: as `users add` prints it).
    More (a second line, a comment, "Bearer ...") went into the Authorization header,
    and http.client refused it with a traceback that printed the header: the token.
    Never shown here."""
    if not (token.isascii() and token.isprintable()) or " " in token:
        raise ApiClientError(f"{where} holds more than a token (a space, a second line "
                             f"or a character no token has): put only the token in it, "
                             f"as `audit-collector users add` printed it")
    return token


def post_json(api: ApiAccess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` to ``path``; the JSON answer, or ``ApiClientError`` with the API's
    message (``status`` set) or why it could not be reached. Given up on after
    ``TIMEOUT`` in all: the socket's own timeout is for each read, and an answer sent a
    byte at a time never reaches it."""
    outcome: list[dict[str, Any] | BaseException] = []

    def ask() -> None:
        try:
            outcome.append(_post(api, path, body))
        except BaseException as exc:  # noqa: BLE001 - raised again below, in the caller
            outcome.append(exc)

    # A daemon thread: one still waiting ends with the command.
    worker = threading.Thread(target=ask, name="audit-api-client", daemon=True)
    worker.start()
    worker.join(TIMEOUT)
    if not outcome:
        raise ApiClientError(f"no whole answer from the collector's API at {api.url} "
                             f"within {TIMEOUT:g} s, given up: whether it was done, "
                             f"`audit-collector losses` shows (and `audit-collector stats` "
                             f"whether the collector's storage is failing); asking again "
                             f"with the same --through and --reason is safe: the same "
                             f"acknowledgement is never recorded twice")
    [result] = outcome
    if isinstance(result, BaseException):
        raise result
    return result


def _post(api: ApiAccess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        api.url + path, data=orjson.dumps(body), method="POST",
        headers={"Authorization": f"Bearer {api.token}",
                 "Content-Type": "application/json", "Accept": "application/json"})
    try:
        with _opener(api).open(request, timeout=TIMEOUT) as answer:
            data = answer.read(MAX_ANSWER + 1)
            if len(data) > MAX_ANSWER:
                raise ApiClientError(f"the answer of {api.url} is over {MAX_ANSWER} bytes, "
                                     f"not read: is --api-url the collector's API?")
            return _json(data)
    except urllib.error.HTTPError as exc:
        with exc:
            if 300 <= exc.code < 400:
                raise ApiClientError(
                    f"the API at {api.url} redirected to {exc.headers.get('Location')!r} "
                    f"(HTTP {exc.code}), not followed: the token goes to the collector's "
                    f"API only. Give --api-url the API's own address", exc.code) from None
            said = _json(exc.read(MAX_ANSWER)).get("message") or exc.reason
        # Shown on a terminal: the answer's control characters escaped, never sent raw.
        raise ApiClientError(f"{terminal_safe(str(said))} (HTTP {exc.code})",
                             exc.code) from None
    except http.client.HTTPException as exc:  # not OSErrors: a traceback, otherwise
        raise ApiClientError(f"the answer of {api.url} is not one of HTTP "
                             f"({terminal_safe(repr(exc))}): is --api-url the collector's "
                             f"API?") from None
    except (urllib.error.URLError, OSError) as exc:
        why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        # A collector that answers, over TLS this side cannot use: not "is it running?"
        if isinstance(why, ssl.SSLCertVerificationError):
            raise ApiClientError(f"TLS with the API at {api.url} failed ({why}): "
                                 f"{refused_certificate(why, _REMEDIES)}") from None
        if isinstance(why, ssl.SSLError):
            raise ApiClientError(
                f"TLS with the API at {api.url} failed ({why}): https only if the "
                f"collector serves it (api_tls_cert set where serve reads it, and here); "
                f"otherwise http") from None
        raise ApiClientError(f"no answer from the collector's API at {api.url} ({why}): "
                             f"is the collector running (`audit-collector serve`) with "
                             f"this api_listen? Otherwise give --api-url") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect answered as it is (an ``HTTPError``): urllib follows one to any URL,
    plain http or another host, with the request's headers, the token among them."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(api: ApiAccess) -> urllib.request.OpenerDirector:
    """Straight to ``api.url``: no proxy from the environment (``http_proxy`` would
    get the token, in clear for plain http) and no redirect; https verified against
    ``api.tls_cert`` and the system's CAs."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({}),
                                                  _NoRedirect()]
    if api.url.startswith("https"):
        handlers.append(urllib.request.HTTPSHandler(context=_tls(api)))
    return urllib.request.build_opener(*handlers)


def _tls(api: ApiAccess) -> ssl.SSLContext:
    # Partial chains on: the collector's own certificate is trusted as such (a
    # self-signed one, or a leaf whose CA this host does not have).
    context = verifying_context()
    if api.tls_cert is not None:
        try:
            context.load_verify_locations(cafile=api.tls_cert)
        except (OSError, ssl.SSLError) as exc:
            raise ApiClientError(f"cannot read api_tls_cert {api.tls_cert}: {exc}") from None
    return context


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
