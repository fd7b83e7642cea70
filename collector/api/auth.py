"""Who is asking: a reader token (``Authorization: Bearer``) or a panel session cookie.

Only root readers may read audit logs. A request without credentials and a request with
credentials that match no reader both get 401; a reader that is not root gets 403. None
of these responses says anything about the logs.

The panel signs in once with a token (``POST /api/v1/session``) and then holds only a
random session id in an ``HttpOnly; SameSite=Strict`` cookie: the token never stays in
the browser, page scripts cannot read the session, other sites cannot send it, and a
CSV download is a plain link the browser streams to disk. Other ports of the same host
are the same site to a browser: a cookie request whose Fetch Metadata says another page
made it is refused (``own_page``). Sessions live in memory (a
restart signs everyone out), expire after an idle hour or twelve hours, and end as soon
as their reader is removed.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from starlette.requests import HTTPConnection

from collector.readers import Reader, Readers

SESSION_COOKIE: Final = "audit_session"
SESSION_IDLE: Final = 3600.0
SESSION_MAX_AGE: Final = 12 * 3600.0
MAX_SESSIONS: Final = 10_000
_CHALLENGE: Final = 'Bearer realm="audit-collector"'


class AuthError(Exception):
    """A request that may not proceed: ``status`` 401 or 403, a message for the caller.

    ``denied``: why, when the attempt is one to record (``collector.api.denials``): bad
    credentials, not root, a foreign sign-in; None for a request without credentials.
    ``principal``: the reader, when the credentials were a reader's."""

    def __init__(self, status: int, error: str, message: str,
                 challenge: str | None = None, *, denied: str | None = None,
                 principal: str = "") -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.headers = {"WWW-Authenticate": challenge} if challenge else {}
        self.denied, self.principal = denied, principal


def unauthorized(detail: str, denied: str | None) -> AuthError:
    """401; ``denied`` names what was wrong with the credentials given (None: none)."""
    challenge = _CHALLENGE + (', error="invalid_token"' if denied else "")
    return AuthError(401, "unauthorized", detail, challenge, denied=denied)


def invalid_token() -> AuthError:
    """401 for a bearer token (or a panel sign-in token) no reader holds."""
    return unauthorized("this token is not valid: use a token printed by "
                        "`audit-collector users add`", denied="invalid token")


FORBIDDEN_MESSAGE: Final = ("only root readers may read audit logs: ask an operator for a "
                            "root token (audit-collector users add NAME --root)")


def forbidden(reader: Reader) -> AuthError:
    return AuthError(403, "forbidden", FORBIDDEN_MESSAGE, denied="not root",
                     principal=reader.name)


@dataclass
class _Session:
    name: str
    key_id: str
    started: float
    seen: float


class Sessions:
    """Panel sessions: random ids -> (reader name, key id), in memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._now = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def start(self, reader: Reader) -> str:
        sid = secrets.token_urlsafe(32)
        now = self._now()
        with self._lock:
            self._sessions[sid] = _Session(reader.name, reader.key_id, now, now)
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)  # the least recently used
        return sid

    def get(self, sid: str) -> tuple[str, str] | None:
        now = self._now()
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return None
            if now - session.seen > SESSION_IDLE or now - session.started > SESSION_MAX_AGE:
                del self._sessions[sid]
                return None
            session.seen = now
            self._sessions.move_to_end(sid)
            return session.name, session.key_id

    def end(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)


def several_authorizations(count: int) -> AuthError:
    """400 for a request with more than one ``Authorization`` header (RFC 6750's
    ``invalid_request``): recorded, as an attempt with credentials."""
    return AuthError(400, "bad_request", f"this request has {count} Authorization "
                     "headers: send one Authorization header (Authorization: Bearer "
                     "<token>)", _CHALLENGE + ', error="invalid_request"',
                     denied="more than one Authorization header")


def bearer_token(conn: HTTPConnection) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None for no header or another
    scheme. Another scheme is no credential of this API but someone else's: a reverse
    proxy with HTTP Basic in front of the panel gets ``Authorization: Basic`` from the
    browser on every request, and forwards it (nginx does by default). Taken for a bad
    token ("" then), it overrode the session cookie: the signed-in panel got 401 on
    every call, each recorded as an attempt with an invalid token.

    More than one header is ``AuthError`` (400): the field holds one credential, and
    only the first was read, so a proxy in front that checks (or appends) the last one
    saw another credential than the one this API acted on."""
    headers = conn.headers.getlist("authorization")
    if len(headers) > 1:
        raise several_authorizations(len(headers))
    if not headers:
        return None
    scheme, _, token = headers[0].partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


#: What the browser says of where a request comes from (Fetch Metadata) that lets the
#: session cookie act: the panel's own pages, or the user typing a URL or following a
#: bookmark. Absent (an older browser, curl) is let through, as before.
_OWN_PAGE_SITES: Final = frozenset({"same-origin", "none"})
CROSS_SITE_MESSAGE: Final = ("the panel's session acts only for the panel's own pages: open "
                             "the panel itself, or send Authorization: Bearer <token>")


def own_page(conn: HTTPConnection) -> bool:
    """False for a request another page made with the session cookie. Browsers keep
    cookies per host, not per port, and ``SameSite=Strict`` counts every port of the
    host as the same site: without this, a page served by any other service on the
    collector's host (the audited app, a dev server) could start exports as the signed-in
    root reader (an ``<img src=.../export.csv>``), though not read them."""
    site = conn.headers.get("sec-fetch-site")
    return site is None or site in _OWN_PAGE_SITES


class ReadersLate(Exception):
    """``readers.json`` was not read within the wait (a hung data disk): no credential
    can be checked now (503)."""

    def __init__(self) -> None:
        super().__init__("the readers file (readers.json, to check credentials) could not "
                         "be read in time: the data disk does not answer (a hung disk, a "
                         "frozen network file system); try again once it does")


async def authenticate(conn: HTTPConnection, readers: Readers, sessions: Sessions,
                       fresh: Callable[[], Awaitable[None]]) -> Reader:
    """The reader making this request, or ``AuthError`` (401). ``fresh`` has
    ``readers`` read its file again if it changed (off the loop: ``Api.fresh_readers``),
    awaited only when there is a credential to check against it."""
    token = bearer_token(conn)
    if token is not None:
        await fresh()
        reader = readers.authenticate(token, refresh=False)
        if reader is None:
            raise invalid_token()
        return reader
    sid = conn.cookies.get(SESSION_COOKIE)
    if sid:
        if not own_page(conn):
            raise AuthError(403, "forbidden", CROSS_SITE_MESSAGE,
                            denied="session cookie sent by another site's page")
        held = sessions.get(sid)
        if held:
            await fresh()
        reader = readers.current(*held, refresh=False) if held else None
        if reader is None:
            raise unauthorized("your session has ended: sign in again",
                               denied="session ended")
        return reader
    raise unauthorized("sign in: send Authorization: Bearer <token>", denied=None)
