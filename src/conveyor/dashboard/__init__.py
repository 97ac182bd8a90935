"""The web dashboard, served by ``conveyor scheduler --http`` at ``/``.

Server-rendered pages (Jinja2 templates in ``templates/``) with htmx for live updates and
one-click actions, uPlot for the last-hour chart, and one small stylesheet; the front-end files
are vendored in ``static/vendor`` (``scripts/vendor-frontend.sh``), so nothing is fetched from
elsewhere and users need no Node. Pages read and act only through ``Operations`` and
``TaskService``, the same calls as the HTTP API and the CLI.

Modules: ``render.py`` (template environment, filters, security headers), ``pages.py`` (the
pages and their live fragments), ``actions.py`` (the buttons), ``login.py`` (sign-in,
sign-out, the API docs page).
"""

from __future__ import annotations

from fastapi import FastAPI

from conveyor.dashboard.render import StaticFiles, static_dir


def mount(app: FastAPI) -> None:
    """Add the dashboard's routes and static files to the API app."""
    from conveyor.dashboard import actions, login, pages

    app.include_router(login.router, include_in_schema=False)
    app.include_router(pages.router, include_in_schema=False)
    app.include_router(actions.router, include_in_schema=False)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
