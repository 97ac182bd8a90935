"""Operator endpoints: bulk retry/cancel, purge, the overview, dead letters.

Every handler calls ``Operations`` (the same object the dashboard and the CLI use).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from conveyor.api.handlers import OpsDep
from conveyor.api.handlers.tasks import search_of
from conveyor.api.schemas import ApiInputError, Eta, FilterText, JsonResponse
from conveyor.model import TaskStatus
from conveyor.operations import BULK_LIMIT
from conveyor.store.queries import TaskSearch

router = APIRouter(tags=["operators"])


class TaskFilterIn(BaseModel):
    """Which tasks: the filters of ``GET /tasks``, combined."""

    model_config = ConfigDict(extra="forbid")

    status: TaskStatus | None = None
    type: FilterText | None = None
    queue: FilterText | None = None
    node: FilterText | None = None
    since: Eta = Field(None, description="created at or after (ISO-8601)")
    until: Eta = Field(None, description="created before (ISO-8601)")
    id: FilterText | None = Field(None, description="id prefix")
    idempotency_key: FilterText | None = None

    def to_search(self) -> TaskSearch:
        return search_of(self.status, self.type, self.queue, self.node, self.since, self.until, self.id,
                         self.idempotency_key)


class BulkIn(BaseModel):
    """Name the tasks by ``ids`` (full ids or prefixes), or by ``filter``; not both."""

    model_config = ConfigDict(extra="forbid")

    ids: list[FilterText] | None = Field(None, max_length=BULK_LIMIT)
    filter: TaskFilterIn | None = None
    limit: StrictInt = Field(BULK_LIMIT, ge=1, le=BULK_LIMIT, description="stop after this many tasks")


class BulkOut(BaseModel):
    done: int
    ids: list[str]
    skipped: int = Field(description="matched, but their status did not allow it")
    more: bool = Field(description="stopped at the limit; call again for the rest")


class PurgeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    finished_before: datetime = Field(description="delete tasks that finished before this (ISO-8601)")


class DeadLettersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[FilterText] | None = None
    all: StrictBool = False


def _bulk(ops: Any, body: BulkIn, action: str) -> JsonResponse:
    if (body.ids is None) == (body.filter is None):
        raise ApiInputError("give either ids or filter", ["ids", "filter"])
    try:
        if body.ids is not None:
            result = ops.apply_to_ids(list(body.ids), action)
        elif action == "retry":
            result = ops.retry_matching(body.filter.to_search() if body.filter else TaskSearch(), body.limit)
        else:
            result = ops.cancel_matching(body.filter.to_search() if body.filter else TaskSearch(), body.limit)
    except ValueError as exc:
        raise ApiInputError(f"filter.status: {exc}", ["filter.status"]) from exc
    return JsonResponse(result.to_dict())


@router.post("/tasks:retry", response_model=BulkOut)
def retry_tasks(body: BulkIn, ops: OpsDep) -> JsonResponse:
    """Retry the failed or cancelled tasks named by ``ids`` or matching ``filter``."""
    return _bulk(ops, body, "retry")


@router.post("/tasks:cancel", response_model=BulkOut)
def cancel_tasks(body: BulkIn, ops: OpsDep) -> JsonResponse:
    """Cancel the unfinished tasks named by ``ids`` or matching ``filter``."""
    return _bulk(ops, body, "cancel")


@router.post("/tasks:purge")
def purge_tasks(body: PurgeIn, ops: OpsDep) -> JsonResponse:
    """Delete the tasks (and their timelines) that finished before ``finished_before``."""
    return JsonResponse({"deleted": ops.purge(body.finished_before.timestamp())})


@router.get("/overview")
def overview(ops: OpsDep) -> JsonResponse:
    """Counts by status, per-queue figures, the last hour per minute (throughput, failures,
    p50/p95 run time) and nodes by state: what the dashboard's first page shows."""
    return JsonResponse(ops.overview())


@router.get("/dead-letters")
def list_dead_letters(ops: OpsDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JsonResponse:
    """Dead-lettered messages, oldest first, with the reason each was dead-lettered."""
    return JsonResponse({"dead_letters": [d.to_dict() for d in ops.dead_letters(limit)]})


def _chosen(body: DeadLettersIn) -> list[str] | None:
    if body.all == (body.ids is not None):
        raise ApiInputError("give either ids or all: true", ["ids", "all"])
    return None if body.all else list(body.ids or [])


@router.post("/dead-letters:replay")
def replay_dead_letters(body: DeadLettersIn, ops: OpsDep) -> JsonResponse:
    """Send dead letters back: a failed task is retried under its id; another message goes back
    to its queue as it is."""
    return JsonResponse({"replayed": ops.replay_dead(_chosen(body))})


@router.post("/dead-letters:delete")
def delete_dead_letters(body: DeadLettersIn, ops: OpsDep) -> JsonResponse:
    """Delete dead letters for good."""
    return JsonResponse({"deleted": ops.delete_dead(_chosen(body))})
