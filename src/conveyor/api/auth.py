"""Authentication of the HTTP API and the dashboard: one token, two ways to present it.

When ``settings.api_token`` (``CONVEYOR_API_TOKEN``) is set, every request but the health
probes, the sign-in page and the static files must carry either

- ``Authorization: Bearer <token>`` (API clients, scripts, Prometheus), or
- the session cookie a browser gets from the sign-in form (``POST /login``): HttpOnly,
  SameSite=Strict, signed with the token (``expiry.nonce.hmac``), so changing the token signs
  every browser out and the server keeps no session table.

A request authenticated by the cookie that changes something (any method but GET/HEAD/OPTIONS)
must also send ``X-CSRF-Token``, a value derived from the session (``csrf_token``), which the
dashboard's pages carry and a cross-site page cannot read. Independently of the token, any
state-changing request whose ``Origin`` is another site is refused (403): that protects a
token-less server on 127.0.0.1 from the pages its user visits too.

It is checked in ASGI middleware, before routing and body parsing, so an unauthenticated
client learns nothing about routes or validation. A browser asking for a page without a
session is sent to the sign-in page; other clients get a 401.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import quote, urlsplit

from fastapi.security import HTTPBearer
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor.api.schemas import error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/login", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_COOKIE = "conveyor_session"
CSRF_HEADER = "x-csrf-token"
SESSION_S = 12 * 3600

# Declared on the routes for the OpenAPI spec only; the middleware below enforces it.
bearer_scheme = HTTPBearer(auto_error=False, description="CONVEYOR_API_TOKEN, when the server sets one")


def token_matches(authorization: bytes | None, token: str) -> bool:
    """Constant-time check of an ``Authorization`` header value against ``token``."""
    if not authorization:
        return False
    scheme, _, given = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(given.strip(), token.encode("utf-8"))


def _sign(token: str, text: str) -> str:
    return hmac.new(token.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()


def new_session(token: str, at: float | None = None) -> str:
    """A session cookie value valid for ``SESSION_S``."""
    expires = int((at or time.time()) + SESSION_S)
    nonce = secrets.token_hex(8)
    return f"{expires}.{nonce}.{_sign(token, f'session.{expires}.{nonce}')}"


def session_valid(value: str | None, token: str, at: float | None = None) -> bool:
    if not value or value.count(".") != 2:
        return False
    expires, nonce, signature = value.split(".")
    if not expires.isdigit() or int(expires) < (at or time.time()):
        return False
    return hmac.compare_digest(signature, _sign(token, f"session.{expires}.{nonce}"))


def csrf_token(session: str, token: str) -> str:
    """The CSRF token of a session: derived, so nothing is stored."""
    return _sign(token, f"csrf.{session}")[:32]


def cookie_value(headers: dict[bytes, bytes], name: str = SESSION_COOKIE) -> str | None:
    raw = headers.get(b"cookie", b"").decode("latin-1")
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def foreign_origin(headers: dict[bytes, bytes]) -> bool:
    """True when the request says it comes from a page of another site than this one."""
    origin = headers.get(b"origin")
    if origin is None or origin == b"null":
        return origin == b"null"
    host = headers.get(b"host", b"").decode("latin-1").lower()
    return urlsplit(origin.decode("latin-1")).netloc.lower() != host


def _wants_html(scope: Scope, headers: dict[bytes, bytes]) -> bool:
    return scope["method"] == "GET" and b"text/html" in headers.get(b"accept", b"") \
        and not scope["path"].startswith("/api/")


class AuthMiddleware:
    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token or None  # an empty token means "no auth", never "empty password"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if scope["method"] not in SAFE_METHODS and foreign_origin(headers):
            await error_response(403, "forbidden", "cross-site request refused (Origin is another site)")(
                scope, receive, send)
            return
        path = scope["path"]
        if self.token is None or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        authorization = headers.get(b"authorization")
        if token_matches(authorization, self.token):
            await self.app(scope, receive, send)
            return
        session = cookie_value(headers)
        if authorization is None and session_valid(session, self.token):
            assert session is not None
            given = headers.get(CSRF_HEADER.encode(), b"").decode("latin-1")
            if scope["method"] in SAFE_METHODS or hmac.compare_digest(given, csrf_token(session, self.token)):
                scope.setdefault("state", {})["csrf"] = csrf_token(session, self.token)
                await self.app(scope, receive, send)
                return
            await error_response(403, "forbidden", "missing or wrong X-CSRF-Token for a signed-in session")(
                scope, receive, send)
            return
        if authorization is None and _wants_html(scope, headers):
            target = path + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
            await RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)(scope, receive, send)
            return
        text = "missing bearer token" if authorization is None else "wrong bearer token"
        response = error_response(401, "unauthorized", f"{text}: send 'Authorization: Bearer <token>' "
                                  "or sign in at /login", headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


