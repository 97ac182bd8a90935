"""Rendering helpers of the dashboard: the Jinja2 environment and its filters, the page
response (with its security headers), and the static files (with cache headers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles as _StaticFiles
from starlette.types import Scope

from conveyor import __version__
from conveyor.model import now

# No inline scripts anywhere (the pages load their JS from /static); styles may be set by the
# chart library. Nothing is loaded from another origin.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
NAV = (("/", "Overview"), ("/tasks", "Tasks"), ("/nodes", "Nodes"), ("/schedules", "Schedules"),
       ("/dead-letters", "Dead letters"), ("/docs", "API"))


def static_dir() -> Path:
    return Path(str(resources.files("conveyor.dashboard").joinpath("static")))


class StaticFiles(_StaticFiles):
    """Static files cached by browsers for a day (URLs carry ?v=<version>)."""

    async def get_response(self, path: str, scope: Scope) -> Any:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=86400"
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def when(ts: float | None) -> str:
    """``2026-11-30 12:03:04`` (UTC)."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def age(ts: float | None, at: float | None = None) -> str:
    """``5 s ago`` / ``in 3 min``."""
    if ts is None:
        return ""
    delta = (at or now()) - ts
    text = seconds(abs(delta))
    return f"{text} ago" if delta >= 0 else f"in {text}"


def seconds(value: float | None) -> str:
    """A duration for people: 850 ms, 12.3 s, 4 min, 2.5 h, 3 d."""
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{value / 60:.0f} min"
    if value < 86400:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} d"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("conveyor.dashboard", "templates"),
                             autoescape=jinja2.select_autoescape(default=True), trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(when=when, age=age, seconds=seconds, pretty=pretty)
    env.globals.update(version=__version__, nav=NAV)
    return env


ENV = _environment()


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``template`` for ``request`` with the page context (CSRF token, auth, path)."""
    settings = request.app.state.settings
    state = request.scope.get("state") or {}
    html = ENV.get_template(template).render(
        csrf=state.get("csrf", ""), signed_in=bool(settings.api_token), path=request.url.path,
        fragment=request.headers.get("hx-request") == "true", **context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def hx_only(request: Request) -> bool:
    """True for an htmx request (the page then answers with a fragment)."""
    return request.headers.get("hx-request") == "true"
