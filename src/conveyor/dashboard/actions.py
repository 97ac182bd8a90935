"""The dashboard's buttons. Each is a POST sent by htmx (with the page's CSRF token in a
header, checked by ``conveyor.api.auth``), does one thing through ``Operations`` /
``TaskService``, and answers with the refreshed part of the page and a message saying what
happened. A refused action (a finished task cannot be cancelled) is a message, not an error
status, so the page shows it where the user is looking."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse

from conveyor.api.handlers import OpsDep, get_operations
from conveyor.dashboard import pages
from conveyor.dashboard.render import page
from conveyor.errors import ConcurrentUpdate, InvalidTransition, TaskNotFound
from conveyor.model import TaskStatus
from conveyor.operations import Operations
from conveyor.scheduler.manual import run_now
from conveyor.scheduler.schedule_store import ScheduleChanged, ScheduleNotFound
from conveyor.store.queries import AmbiguousId

router = APIRouter(dependencies=[Depends(get_operations)])


def _refused(exc: Exception) -> str:
    return f"Not done: {exc}"


# -- one task -------------------------------------------------------------------------------
@router.post("/tasks/{task_id}/retry", response_class=HTMLResponse)
def retry_task(request: Request, task_id: str, ops: OpsDep) -> HTMLResponse:
    return _task_action(request, ops, task_id, "retry")


@router.post("/tasks/{task_id}/cancel", response_class=HTMLResponse)
def cancel_task(request: Request, task_id: str, ops: OpsDep) -> HTMLResponse:
    return _task_action(request, ops, task_id, "cancel")


def _task_action(request: Request, ops: Operations, text: str, action: str) -> HTMLResponse:
    try:
        tid = ops.resolve(text)
    except (TaskNotFound, AmbiguousId, ValueError) as exc:
        return page(request, "missing.html", title="Not found", message=str(exc))
    try:
        if action == "retry":
            ops.service.retry(tid)
            flash = "Retried: the task is queued again."
        else:
            ops.service.cancel(tid)
            flash = "Cancelled."
    except (InvalidTransition, ConcurrentUpdate) as exc:
        flash = _refused(exc)
    return pages.task_page(request, ops, tid, flash=flash)


# -- tasks matching the filters ---------------------------------------------------------------
async def _form_body(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v.strip() for k, v in parse_qsl(body, keep_blank_values=True)}


@router.post("/bulk/tasks/{action}", response_class=HTMLResponse)
async def bulk(request: Request, action: str, ops: OpsDep) -> HTMLResponse:
    sent = await _form_body(request)
    form = {k: sent.get(k, "") for k in ("status", "type", "queue", "node", "range", "since", "until", "q")}
    form["cursor"] = ""
    search, problem = pages.search_from(form)

    def work() -> str:
        if problem:
            return problem
        try:
            if action == "retry":
                result = ops.retry_matching(search)
                verb = "Retried"
            elif action == "cancel":
                result = ops.cancel_matching(search)
                verb = "Cancelled"
            else:
                return f"unknown action {action!r}"
        except ValueError as exc:
            return _refused(exc)
        more = " More match: run it again for the next batch." if result.more else ""
        skipped = f" ({result.skipped} skipped: their status changed)" if result.skipped else ""
        return f"{verb} {len(result.done)} task(s){skipped}.{more}"

    flash = await run_in_threadpool(work)
    result = await run_in_threadpool(ops.search, search, limit=pages.PAGE_SIZE)
    query = {k: v for k, v in form.items() if v}
    return page(request, "_tasks.html", title="Tasks", form=form, page=result, problem=None, query=query,
                statuses=[s.value for s in TaskStatus], ranges=list(pages.RANGES), flash=flash,
                can_retry=search.status in (None, TaskStatus.FAILED, TaskStatus.CANCELLED),
                can_cancel=search.status is None or not search.status.is_final)


# -- schedules ------------------------------------------------------------------------------
@router.post("/schedules/{name}/{action}", response_class=HTMLResponse)
def schedule_action(request: Request, name: str, action: str, ops: OpsDep) -> HTMLResponse:
    from conveyor.api.schedules import get_schedule_store

    store = get_schedule_store(request, request.app.state.settings)
    try:
        schedule = store.get(name)
        if action in ("enable", "disable"):
            store.update(schedule.redefine(enabled=action == "enable"))
            flash = f"{name}: {action}d."
        elif action == "run":
            task = run_now(ops.service, schedule)
            flash = f"{name}: submitted task {task.id}."
        else:
            flash = f"unknown action {action!r}"
    except (ScheduleNotFound, ScheduleChanged) as exc:
        flash = _refused(exc)
    return pages.schedules_page(request, ops, flash=flash)


# -- dead letters ---------------------------------------------------------------------------
@router.post("/dead-letters/{letter_id}/{action}", response_class=HTMLResponse)
def dead_letter_action(request: Request, letter_id: str, action: str, ops: OpsDep) -> HTMLResponse:
    ids = None if letter_id == "all" else [letter_id]
    actions: dict[str, tuple[Callable[[list[str] | None], int], str]] = {
        "replay": (ops.replay_dead, "Replayed"), "delete": (ops.delete_dead, "Deleted")}
    if action not in actions:
        return pages.dead_page(request, ops, flash=f"unknown action {action!r}")
    do, verb = actions[action]
    count: Any = do(ids)
    return pages.dead_page(request, ops, flash=f"{verb} {count} dead letter(s).")
