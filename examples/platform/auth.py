"""Users and bearer tokens of the example platform.

Authentication is Starlette's ``AuthenticationMiddleware`` with a bearer-token backend,
so the audit principal comes from ``scope["user"]`` (its ``identity``, the user id):
the app never tells the audit layer who acted, and a client cannot either. Tokens and
passwords are stored only as hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
)
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from .store import AccessToken, Store, User, new_id

# Enough to make a stolen hash expensive, cheap enough for a test suite that signs in.
_PBKDF2_ROUNDS = 20_000


@dataclass(frozen=True)
class DemoUser:
    id: str
    name: str
    email: str
    password: str
    token: str
    is_root: bool = False


#: Seeded into every app built with ``seed_demo_users=True`` (the default), so the
#: curl examples of ``make run`` work. Not for anything but a local demo.
DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser("usr_root", "Root Admin", "root@example.org", "root-password",
             "demo-root-token", is_root=True),
    DemoUser("usr_alice", "Alice Liddell", "alice@example.org", "alice-password",
             "demo-alice-token"),
)
ROOT, ALICE = DEMO_USERS


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _PBKDF2_ROUNDS)
    return f"{salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    salt_hex, _, _ = stored.partition("$")
    return hmac.compare_digest(hash_password(password, bytes.fromhex(salt_hex)), stored)


def hash_token(token: str) -> str:
    # Tokens are 192 random bits: a plain digest is enough, and makes lookup a dict get.
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(store: Store, user_id: str, name: str, *, session: bool = False,
                secret: str | None = None) -> tuple[AccessToken, str]:
    """A new token for ``user_id``: the row (kept) and the secret (shown once)."""
    secret = secret if secret is not None else "tok_" + secrets.token_urlsafe(24)
    row = store.tokens.add(
        AccessToken(new_id("tkn"), user_id, name, hash_token(secret), session=session)
    )
    return row, secret


def seed_demo_users(store: Store) -> None:
    for demo in DEMO_USERS:
        store.users.add(User(demo.id, demo.name, demo.email, hash_password(demo.password),
                             is_root=demo.is_root))
        issue_token(store, demo.id, "demo", secret=demo.token)


def find_user_by_email(store: Store, email: str) -> User | None:
    for user in store.users.values():
        if user.email == email:
            return user
    return None


class PlatformUser(BaseUser):
    def __init__(self, user: User) -> None:
        self.user = user

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.user.name

    @property
    def identity(self) -> str:
        return self.user.id


class BearerTokenBackend(AuthenticationBackend):
    def __init__(self, store: Store) -> None:
        self.store = store

    async def authenticate(
        self, conn: HTTPConnection
    ) -> tuple[AuthCredentials, BaseUser] | None:
        header = conn.headers.get("authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError(
                "send 'Authorization: Bearer <token>' (a token from POST /sign-in or "
                "POST /tokens)"
            )
        row = self._lookup(hash_token(token))
        user = self.store.users.get_or_none(row.user_id) if row is not None else None
        if user is None:
            raise AuthenticationError(
                "unknown or revoked token: sign in again (POST /sign-in) or create a new one"
            )
        scopes = ["authenticated", "root"] if user.is_root else ["authenticated"]
        return AuthCredentials(scopes), PlatformUser(user)

    def _lookup(self, digest: str) -> AccessToken | None:
        for row in self.store.tokens.values():
            if hmac.compare_digest(row.token_hash, digest):
                return row
        return None


def on_auth_error(conn: HTTPConnection, exc: AuthenticationError) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=401,
                        headers={"WWW-Authenticate": "Bearer"})


def require_user(request: Request) -> User:
    if not request.user.is_authenticated:
        raise HTTPException(401, "sign in first: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    user: User = request.user.user
    return user


def require_root(request: Request) -> User:
    user = require_user(request)
    if not user.is_root:
        raise HTTPException(403, "only root users can do this")
    return user
