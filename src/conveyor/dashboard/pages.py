"""The dashboard's pages. Each answers a browser with the whole page, and htmx (which polls
for live updates and swaps in results) with just the part that changes. Handlers are plain
``def``: the store calls block, so they run in the server's thread pool."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import HTMLResponse

from conveyor.api.handlers import OpsDep, get_operations
from conveyor.dashboard.render import hx_only, page
from conveyor.errors import TaskNotFound
from conveyor.model import FINAL_STATUSES, TaskStatus, now
from conveyor.operations import Operations
from conveyor.scheduler.manual import recent_fires
from conveyor.store.queries import AmbiguousId, TaskSearch

router = APIRouter(dependencies=[Depends(get_operations)])

PAGE_SIZE = 50
RANGES = {"15m": 900.0, "1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
_ID_LIKE = re.compile(r"^[0-9a-fA-F-]{4,36}$")


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, ops: OpsDep) -> HTMLResponse:
    data = ops.overview()
    template = "_overview.html" if hx_only(request) else "overview.html"
    return page(request, template, title="Overview", data=data, statuses=[s.value for s in TaskStatus])


# -- tasks ----------------------------------------------------------------------------------
def _form(request: Request) -> dict[str, str]:
    keys = ("status", "type", "queue", "node", "range", "since", "until", "q", "cursor")
    return {k: request.query_params.get(k, "").strip() for k in keys}


def _parse_time(text: str) -> float | None:
    if not text:
        return None
    parsed = datetime.fromisoformat(text)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def search_from(form: dict[str, str]) -> tuple[TaskSearch, str | None]:
    """The search a filter form asks for, and a message when part of it made no sense."""
    problem = None
    status = TaskStatus(form["status"]) if form["status"] in {s.value for s in TaskStatus} else None
    search = TaskSearch(status=status, type=form["type"] or None, queue=form["queue"] or None,
                        node=form["node"] or None)
    if form["range"] in RANGES:
        search = search.with_(created_after=now() - RANGES[form["range"]])
    try:
        since, until = _parse_time(form["since"]), _parse_time(form["until"])
        if since is not None:
            search = search.with_(created_after=since)
        if until is not None:
            search = search.with_(created_before=until)
    except ValueError:
        problem = "dates must look like 2026-01-31T12:00 (UTC)"
    text = form["q"]
    if text:
        hexish = _ID_LIKE.match(text) and len(text.replace("-", "")) <= 32
        search = search.with_(id_prefix=text) if hexish else search.with_(idempotency_key=text)
    return search, problem


@router.get("/tasks", response_class=HTMLResponse)
def tasks(request: Request, ops: OpsDep) -> HTMLResponse:
    form = _form(request)
    search, problem = search_from(form)
    cursor = None
    try:
        cursor = uuid.UUID(form["cursor"]) if form["cursor"] else None
    except ValueError:
        problem = "bad page cursor"
    result = ops.search(search, limit=PAGE_SIZE, cursor=cursor)
    query = {k: v for k, v in form.items() if v and k != "cursor"}
    template = "_tasks.html" if hx_only(request) else "tasks.html"
    return page(request, template, title="Tasks", form=form, page=result, problem=problem, query=query,
                statuses=[s.value for s in TaskStatus], ranges=list(RANGES), flash=None,
                can_retry=search.status in (None, TaskStatus.FAILED, TaskStatus.CANCELLED),
                can_cancel=search.status is None or search.status not in FINAL_STATUSES)


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_detail(request: Request, task_id: str, ops: OpsDep) -> HTMLResponse:
    try:
        tid = ops.resolve(task_id)
        task = ops.service.get(tid)
    except (TaskNotFound, AmbiguousId, ValueError) as exc:
        return page(request, "missing.html", status_code=404, title="Not found", message=str(exc))
    return task_page(request, ops, task.id, flash=None)


def task_page(request: Request, ops: Operations, task_id: uuid.UUID, flash: str | None,
              status_code: int = 200) -> HTMLResponse:
    task = ops.service.get(task_id)
    events = ops.service.events(task_id)
    steps: list[dict[str, Any]] = []
    previous = None
    for event in events:
        steps.append({"event": event, "after": None if previous is None else event.at - previous})
        previous = event.at
    template = "_task.html" if hx_only(request) else "task.html"
    return page(request, template, status_code=status_code, title=f"Task {str(task.id)[:8]}", task=task,
                steps=steps, flash=flash, final=task.status.is_final)


# -- nodes, schedules, dead letters ----------------------------------------------------------
@router.get("/nodes", response_class=HTMLResponse)
def nodes(request: Request, ops: OpsDep) -> HTMLResponse:
    return page(request, "_nodes.html" if hx_only(request) else "nodes.html", title="Nodes",
                nodes=node_rows(ops))


def node_rows(ops: Operations) -> list[dict[str, Any]]:
    at = now()
    totals = ops.stats.node_totals()
    rows = []
    for node in ops.service.nodes():
        state = "lost" if node.is_silent(at, ops.settings.heartbeat_s) else node.status
        rows.append({"node": node, "state": state, "totals": totals.get(node.id, {})})
    order = {"live": 0, "lost": 1, "stopped": 2}
    return sorted(rows, key=lambda r: (order.get(r["state"], 3), -r["node"].last_heartbeat))


@router.get("/schedules", response_class=HTMLResponse)
def schedules(request: Request, ops: OpsDep) -> HTMLResponse:
    return schedules_page(request, ops, flash=None)


def schedules_page(request: Request, ops: Operations, flash: str | None, status_code: int = 200) -> HTMLResponse:
    from conveyor.api.schedules import get_schedule_store

    store = get_schedule_store(request, request.app.state.settings)
    rows = [{"schedule": s, "fires": recent_fires(ops.queries, s)} for s in store.all()]
    return page(request, "_schedules.html" if hx_only(request) else "schedules.html", status_code=status_code,
                title="Schedules", rows=rows, flash=flash)


@router.get("/dead-letters", response_class=HTMLResponse)
def dead_letters(request: Request, ops: OpsDep) -> HTMLResponse:
    return dead_page(request, ops, flash=None)


def dead_page(request: Request, ops: Operations, flash: str | None, status_code: int = 200) -> HTMLResponse:
    letters = ops.dead_letters(200)
    return page(request, "_dead.html" if hx_only(request) else "dead.html", status_code=status_code,
                title="Dead letters", letters=letters, flash=flash)
