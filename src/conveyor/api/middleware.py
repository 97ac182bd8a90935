"""ASGI middleware of the HTTP API: the body-size limit and the outermost guard (request
metrics, and a logged JSON 500 for any exception no handler claimed)."""

from __future__ import annotations

import logging
import re

import anyio
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.api.handlers.ops import ApiMetrics
from conveyor.api.schemas import error_response

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
BODY_TIMEOUT_S = 30.0  # a request's whole body must arrive within this (slow or half-sent bodies)


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: refused up front by its Content-Length, and counted as
    it streams in (a chunked body has no length); 408 for a body not all received within
    ``timeout_s``. The body is read here, at most ``max_bytes`` of it, and replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        body = bytearray()
        with anyio.move_on_after(self.timeout_s) as deadline:
            while True:
                message = await receive()
                if message["type"] != "http.request":  # the client went away: let the app see it
                    await self.app(scope, _replay({"type": "http.disconnect"}, receive), send)
                    return
                body += message.get("body", b"")
                if len(body) > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:
            log.info("%s %s: body not received within %.0f s", scope["method"], scope["path"], self.timeout_s)
            await error_response(408, "timeout", f"request body not received within {self.timeout_s:g} s",
                                 headers={"Connection": "close"})(scope, receive, send)
            return
        await self.app(scope, _replay({"type": "http.request", "body": bytes(body)}, receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, "too_large", f"request body is over the limit of {self.max_bytes} bytes",
                                  headers={"Connection": "close"})
        await response(scope, receive, send)


def _replay(first: Message, receive: Receive) -> Receive:
    pending: list[Message] = [first]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


class GuardMiddleware:
    """Outermost layer: counts every response for /metrics (by route template, never by raw
    path) and turns an unhandled exception into a logged 500 with a JSON body."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._templates: list[tuple[re.Pattern[str], str]] | None = None  # built on first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = False

        async def watch(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception("unhandled error serving %s %s", scope["method"], scope["path"])
            status = 500
            if started:
                raise  # too late for a response: let the server drop the connection
            await error_response(500, "server", "internal server error (logged on the server)")(
                scope, receive, send)
        finally:
            self.metrics.requests.labels(scope["method"], self._route(scope), str(status)).inc()

    def _route(self, scope: Scope) -> str:
        """The path template the request matched ("/api/v1/tasks/{task_id}") or "unmatched"."""
        if self._templates is None:
            app = scope.get("app")
            if app is None:
                return "unmatched"
            paths = list(app.openapi().get("paths", {}))
            paths += [r.path for r in app.routes if isinstance(getattr(r, "path", None), str)]
            self._templates = [(compile_path(p)[0], p) for p in dict.fromkeys(paths)]
        path = scope["path"]
        return next((template for regex, template in self._templates if regex.match(path)), "unmatched")
