"""Task endpoints: submit (one or a batch), look up, list, cancel, retry.

Handlers are plain ``def``: ``TaskService`` does blocking I/O, so FastAPI runs them in its
threadpool. Wherever a task id is taken, a unique prefix of it is too (``0193a2f1-7c``); a
prefix several tasks share is a 422 listing some; a malformed id is answered like an unknown
one (404): the path names no task.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from conveyor import message
from conveyor.api.handlers import OpsDep, Responses, ServiceDep
from conveyor.api.schemas import (
    ApiInputError,
    BatchIn,
    BatchOut,
    ErrorOut,
    Eta,
    FilterText,
    JsonResponse,
    SubmittedOut,
    TaskDetailOut,
    TaskIn,
    TaskOut,
    TaskPageOut,
)
from conveyor.errors import SerializationError, TaskNotFound
from conveyor.message import Message
from conveyor.model import Task, TaskStatus
from conveyor.operations import Operations
from conveyor.service import SubmitRequest, TaskService
from conveyor.store.queries import AmbiguousId, TaskSearch, normalize_prefix

router = APIRouter(tags=["tasks"])

NOT_FOUND: Responses = {404: {"model": ErrorOut, "description": "No task with that id"}}
CONFLICT: Responses = {409: {"model": ErrorOut, "description": "The task's status does not allow it"}}


def parse_task_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise TaskNotFound(text[:100]) from None


def resolve_task_id(ops: Operations, text: str) -> uuid.UUID:
    """A full id, or the one task whose id starts with ``text``."""
    try:
        return ops.resolve(text)
    except AmbiguousId as exc:
        raise ApiInputError(str(exc), ["task_id"]) from exc
    except ValueError:
        raise TaskNotFound(text[:100]) from None


def _submitted(task: Task, created: bool) -> dict[str, Any]:
    return {**task.to_dict(), "created": created}


def _field_of(error: Exception) -> str:
    """TaskService's messages start with the field they are about ("priority must be ...")."""
    if str(error).startswith("message is"):
        return "params"  # the encoded message is too large: params are what can shrink
    first = str(error).split(" ", 1)[0]
    return first if first in TaskIn.model_fields else "body"


def _check(service: TaskService, request: SubmitRequest, prefix: str = "") -> Task:
    """The validated task, or a 422 naming the field."""
    try:
        task = service.build_task(request)
        message.encode(Message.for_task(task))  # over the message size limit: refuse before storing
    except (ValueError, SerializationError) as exc:
        field = prefix + _field_of(exc)
        raise ApiInputError(f"{field}: {exc}", [field]) from exc
    return task


@router.post("/tasks", status_code=201, response_model=None, responses={
    201: {"model": SubmittedOut, "description": "Created"},
    200: {"model": SubmittedOut, "description": "The idempotency key named an earlier task: that task"},
})
def submit_task(body: TaskIn, service: ServiceDep) -> JsonResponse:
    """Submit one task."""
    task, created = service.submit_task(_check(service, body.to_request()))
    return JsonResponse(_submitted(task, created), status_code=201 if created else 200)


@router.post("/tasks:batch", status_code=201, response_model=None,
             responses={201: {"model": BatchOut, "description": "Submitted, in request order"}})
def submit_batch(body: BatchIn, service: ServiceDep) -> JsonResponse:
    """Submit up to 1,000 tasks. Every item is validated before any is stored, so a bad item
    refuses the whole batch; each result carries its own ``created`` flag."""
    tasks = [_check(service, item.to_request(), prefix=f"tasks[{i}].") for i, item in enumerate(body.tasks)]
    results = service.submit_tasks(tasks)
    return JsonResponse({"tasks": [_submitted(t, created) for t, created in results]}, status_code=201)


@router.get("/tasks/{task_id}", response_model=None,
            responses={200: {"model": TaskDetailOut, "description": "The task and its timeline"}, **NOT_FOUND})
def get_task(task_id: str, service: ServiceDep, ops: OpsDep) -> JsonResponse:
    """One task with its timeline (``events``, oldest first). A unique id prefix will do."""
    tid = resolve_task_id(ops, task_id)
    task = service.get(tid)
    events = service.events(tid)
    return JsonResponse({**task.to_dict(), "events": [e.to_dict() for e in events]})


@router.get("/tasks", response_model=None,
            responses={200: {"model": TaskPageOut, "description": "A page of tasks, newest first"}})
def list_tasks(
    ops: OpsDep,
    status: TaskStatus | None = None,
    task_type: Annotated[FilterText | None, Query(alias="type")] = None,
    queue: FilterText | None = None,
    node: FilterText | None = None,
    since: Annotated[Eta, Query(description="created at or after (ISO-8601)")] = None,
    until: Annotated[Eta, Query(description="created before (ISO-8601)")] = None,
    id_prefix: Annotated[FilterText | None, Query(alias="id", description="id or id prefix")] = None,
    idempotency_key: FilterText | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[uuid.UUID | None, Query(description="next_cursor of the previous page")] = None,
) -> JsonResponse:
    """Tasks newest first, keyset-paged: pass ``next_cursor`` back as ``cursor``. Filters
    combine; ``since``/``until`` bound the creation time."""
    page = ops.search(search_of(status, task_type, queue, node, since, until, id_prefix, idempotency_key),
                      limit=limit, cursor=cursor)
    return JsonResponse({
        "tasks": [t.to_dict() for t in page.tasks],
        "next_cursor": str(page.next_cursor) if page.next_cursor else None,
    })


@router.post("/tasks/{task_id}/cancel", response_model=None,
             responses={200: {"model": TaskOut, "description": "Cancelled"}, **NOT_FOUND, **CONFLICT})
def cancel_task(task_id: str, service: ServiceDep, ops: OpsDep) -> JsonResponse:
    """Cancel a task that has not finished. Queued or scheduled: it never runs. Running: its
    worker is told at its next lease renewal. Finished: 409."""
    return JsonResponse(service.cancel(resolve_task_id(ops, task_id)).to_dict())


@router.post("/tasks/{task_id}/retry", response_model=None,
             responses={200: {"model": TaskOut, "description": "Queued again"}, **NOT_FOUND, **CONFLICT})
def retry_task(task_id: str, service: ServiceDep, ops: OpsDep) -> JsonResponse:
    """Run a failed or cancelled task again: same id, attempts continue. Otherwise 409."""
    return JsonResponse(service.retry(resolve_task_id(ops, task_id)).to_dict())


def search_of(status: TaskStatus | None, task_type: str | None, queue: str | None, node: str | None,
              since: datetime | None, until: datetime | None, id_prefix: str | None,
              idempotency_key: str | None) -> TaskSearch:
    """The search the list and bulk endpoints share (422 for an id prefix that is not hex)."""
    if id_prefix is not None:
        try:
            normalize_prefix(id_prefix)
        except ValueError as exc:
            raise ApiInputError(f"id: {exc}", ["id"]) from exc
    return TaskSearch(status=status, type=task_type, queue=queue, node=node,
                      created_after=since.timestamp() if since else None,
                      created_before=until.timestamp() if until else None,
                      id_prefix=id_prefix, idempotency_key=idempotency_key)
