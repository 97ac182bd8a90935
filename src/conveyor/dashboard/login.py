"""Sign-in and sign-out (the session cookie of ``conveyor.api.auth``), and the API's Swagger
UI at ``/docs``, served from the vendored files so it works with no access to a CDN."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from conveyor.api.auth import SESSION_COOKIE, SESSION_S, new_session
from conveyor.dashboard.render import page

router = APIRouter()


def _safe_next(target: str) -> str:
    """Only a path on this site (never ``//host`` or ``https://...``)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    if not request.app.state.settings.api_token:
        return RedirectResponse("/", status_code=303)
    return page(request, "login.html", title="Sign in", next=_safe_next(request.query_params.get("next", "/")),
                error=None)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    token: str | None = request.app.state.settings.api_token
    form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
    target = _safe_next(form.get("next", "/"))
    if not token:
        return RedirectResponse(target, status_code=303)
    given = form.get("token", "").strip()
    if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
        return page(request, "login.html", status_code=401, title="Sign in", next=target,
                    error="That is not the API token of this server.")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, new_session(token), max_age=SESSION_S, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    response = Response(status_code=204, headers={"HX-Redirect": "/login"})
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request) -> HTMLResponse:
    return page(request, "docs.html", title="API")
