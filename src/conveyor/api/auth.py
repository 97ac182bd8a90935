"""Bearer-token auth for the HTTP API.

When ``settings.api_token`` (``CONVEYOR_API_TOKEN``) is set, every request but the health
probes (``/healthz``, ``/readyz``) must carry ``Authorization: Bearer <token>``; others get a
401. It is checked in ASGI middleware, before routing and body parsing, so an unauthenticated
client learns nothing about routes or validation. With no token configured the API is open:
bind it to 127.0.0.1 or put it behind a network policy.
"""

from __future__ import annotations

import hmac

from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor.api.schemas import error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz"})

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


class BearerAuthMiddleware:
    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token or None  # an empty token means "no auth", never "empty password"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        authorization = dict(scope["headers"]).get(b"authorization")
        if token_matches(authorization, self.token):
            await self.app(scope, receive, send)
            return
        text = "missing bearer token" if authorization is None else "wrong bearer token"
        response = error_response(401, "unauthorized", f"{text}: send 'Authorization: Bearer <token>'",
                                  headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
