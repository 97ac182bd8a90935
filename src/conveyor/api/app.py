"""The HTTP API app factory.

``create_app(settings=None, service=None, *, max_body_bytes=None) -> FastAPI``

- ``settings``: ``Settings`` (default ``config.load()``): store/broker URLs, ``api_token`` and
  ``heartbeat_s`` (a node silent for 3 heartbeats is shown lost).
- ``service``: a ready ``TaskService`` the caller owns (and closes), e.g. ``my_app.service`` of
  a ``Conveyor`` app, whose registry then supplies task-type defaults (queue, priority, ...).
  Without one, the app's lifespan opens the store and broker named by ``settings`` on startup
  and closes them on shutdown; task types then get the generic defaults unless a request says.
- ``max_body_bytes``: request body limit (default 1 MiB; a ``settings.api_max_body_bytes``
  attribute is honoured if Settings gains one).
- ``body_timeout_s``: a request body not all received within this is answered 408.

Serve it with uvicorn: ``uvicorn.run(create_app(settings), host="127.0.0.1", port=8080)``, or
``uvicorn --factory conveyor.api.app:create_app``. Test clients must enter the lifespan
(``with TestClient(app):``) unless a ``service`` is passed.

Every request passes, outermost first: the guard (metrics, logged 500s), auth (bearer token or
the dashboard's session cookie, ``conveyor.api.auth``), the body limit and deadline, then
FastAPI's routing and the handlers. Errors come back as
``{"error": {"type", "message", "fields"}}`` with the status from
``conveyor.api.schemas.ERROR_STATUS``. The dashboard (``conveyor.dashboard``) is served at
``/``, its sign-in page at ``/login`` and the API's Swagger UI at ``/docs``, all from files
shipped in the package.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor import __version__, config
from conveyor.api.auth import AuthMiddleware
from conveyor.api.handlers import operations_of
from conveyor.api.handlers.ops import ApiMetrics
from conveyor.api.middleware import BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, BodyLimitMiddleware, GuardMiddleware
from conveyor.api.routes import build_router, optional_closers
from conveyor.api.schemas import ERROR_STATUS, ApiInputError, JsonResponse, error_kind, error_response
from conveyor.broker import open_broker
from conveyor.config import Settings
from conveyor.service import TaskService
from conveyor.store import open_store

log = logging.getLogger(__name__)

DESCRIPTION = """Submit, inspect, cancel and retry Conveyor tasks; see nodes and queues.

When the server sets `CONVEYOR_API_TOKEN`, send `Authorization: Bearer <token>` on every request
but `/healthz` and `/readyz`. Errors are `{"error": {"type", "message", "fields"}}`."""


def create_app(settings: Settings | None = None, service: TaskService | None = None, *,
               max_body_bytes: int | None = None, body_timeout_s: float = BODY_TIMEOUT_S) -> FastAPI:
    """Build the API app (see the module docstring for the arguments)."""
    settings = settings or config.load()
    limit = max_body_bytes or getattr(settings, "api_max_body_bytes", None) or DEFAULT_MAX_BODY_BYTES
    app = FastAPI(title="Conveyor", version=__version__, description=DESCRIPTION, lifespan=_lifespan,
                  default_response_class=JsonResponse, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.service = service
    app.state.owns_service = service is None
    app.state.metrics = metrics = ApiMetrics(lambda: operations_of(app), settings.heartbeat_s)
    _install_error_handlers(app)
    app.include_router(build_router())
    _mount_dashboard(app)
    # add_middleware wraps: the last added runs first.
    app.add_middleware(BodyLimitMiddleware, max_bytes=limit, timeout_s=body_timeout_s)
    app.add_middleware(AuthMiddleware, token=settings.api_token)
    app.add_middleware(GuardMiddleware, metrics=metrics)
    return app


def _mount_dashboard(app: FastAPI) -> None:
    try:
        from conveyor.dashboard import mount
    except ImportError as exc:  # jinja2 missing: the API still works
        log.warning("dashboard unavailable: %s", exc)
        return
    mount(app)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    opened: TaskService | None = None
    if app.state.owns_service and app.state.service is None:
        opened = await run_in_threadpool(open_service, app.state.settings)
        app.state.service = opened
    try:
        yield
    finally:
        for close in optional_closers():  # e.g. the schedules router's own store
            await run_in_threadpool(close, app)
        ops = getattr(app.state, "operations", None)
        if ops is not None:
            app.state.operations = None
            await run_in_threadpool(ops.close)
        if opened is not None:
            app.state.service = None
            await run_in_threadpool(close_service, opened)


def open_service(settings: Settings) -> TaskService:
    store = open_store(settings.store_url)
    try:
        broker = open_broker(settings.broker_url)
    except BaseException:
        store.close()
        raise
    return TaskService(store, broker)


def close_service(service: TaskService) -> None:
    try:
        service.broker.close()
    finally:
        service.store.close()


# -- errors -------------------------------------------------------------------------------------
def _install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    for cls, _ in ERROR_STATUS:
        app.add_exception_handler(cls, _mapped_error)


async def _mapped_error(request: Request, exc: Exception) -> JsonResponse:
    kind = error_kind(exc)
    if kind.status >= 500:
        log.warning("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    fields = exc.fields if isinstance(exc, ApiInputError) else []
    headers = {"Retry-After": "1"} if kind.status == 503 else None
    return error_response(kind.status, kind.type, str(exc), fields, headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JsonResponse:
    if exc.status_code == 400:  # FastAPI could not parse the body (e.g. JSON nested too deep)
        return error_response(422, "validation", "body: could not be parsed as JSON", ["body"])
    kinds = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
    text = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404:
        text = f"no such endpoint: {request.method} {request.url.path[:200]}"
    return error_response(exc.status_code, kinds.get(exc.status_code, "http"), text,
                          headers=dict(exc.headers) if exc.headers else None)


async def _validation_error(request: Request, exc: RequestValidationError) -> JsonResponse:
    problems = [_describe(error, request) for error in exc.errors()]
    fields = list(dict.fromkeys(field for field, _ in problems))
    shown = [f"{field}: {text}" for field, text in problems[:5]]
    if len(problems) > 5:
        shown.append(f"(+{len(problems) - 5} more)")
    return error_response(422, "validation", "; ".join(shown), fields)


def _describe(error: dict[str, Any], request: Request) -> tuple[str, str]:
    """(field path like ``tasks[3].priority``, message) for one pydantic/FastAPI error."""
    loc: Sequence[Any] = error.get("loc", ())
    kind = error.get("type", "")
    text = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "json_invalid":
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        reason = (error.get("ctx") or {}).get("error", "")
        return "body", f"not valid JSON{where}: {reason}".rstrip(": ")
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header", "cookie") else list(loc)
    if not parts:
        return "body", _body_message(kind, text, request)
    field = ""
    for part in parts:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    return field, text


def _body_message(kind: str, text: str, request: Request) -> str:
    if kind == "missing":
        return "a JSON object is required"
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type:
        return f"send a JSON object with Content-Type: application/json (got {content_type[:100]!r})"
    return text
