"""Flow control endpoints (docs/flow-control.md): workflows (submit, list, look up, cancel),
broadcast and sharded submits, and limits (list, set, remove). Thin: ``FlowService`` does it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from conveyor.api.handlers import Responses, ServiceDep, SettingsDep
from conveyor.api.schemas import (
    ApiInputError,
    ErrorOut,
    JsonResponse,
    QueueName,
    TaskType,
    Text,
    error_response,
)
from conveyor.errors import SerializationError, WorkflowNotFound
from conveyor.flow.service import FlowService
from conveyor.service import TaskService
from conveyor.validation import MAX_ATTEMPTS, MAX_PRIORITY, MAX_TIMEOUT_S

router = APIRouter(tags=["flow control"])

NOT_FOUND: Responses = {404: {"model": ErrorOut, "description": "No workflow with that id"}}
StepName = Annotated[Text, Field(min_length=1, max_length=200)]


# -- request and response models -------------------------------------------------------------
class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    queue: QueueName | None = None
    priority: StrictInt | None = Field(None, ge=0, le=MAX_PRIORITY)
    max_attempts: StrictInt | None = Field(None, ge=1, le=MAX_ATTEMPTS)
    timeout: StrictFloat | None = Field(None, gt=0, le=MAX_TIMEOUT_S)


class StepIn(_Options):
    """One step: a task, the steps it waits for, and what it gets from them."""

    name: StepName | None = Field(None, description="Unique in the workflow; default '<n>.<type>'.")
    type: TaskType
    params: dict[str, Any] = Field(default_factory=dict)
    after: StepName | list[StepName] | None = Field(
        None, description="One step name (this step gets its result) or a list (it gets the list of results).")
    pass_as: StrictStr | None = Field("previous", description="The param that receives the parents' results "
                                                              "(null: none).")
    on_parent_failure: Literal["fail", "skip"] = Field(
        "fail", description="What this step becomes when a parent fails, is cancelled or is skipped.")


class WorkflowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(None, max_length=200)
    steps: list[StepIn] = Field(min_length=1, max_length=10_000)
    result: StepName | list[StepName] | None = Field(
        None, description="The step(s) whose results make the workflow's result; default: the steps nothing "
                          "waits for (one: its result; several: the list).")


class FanOutIn(_Options):
    type: TaskType
    params: dict[str, Any] = Field(default_factory=dict)


class ShardedIn(FanOutIn):
    shards: StrictInt | None = Field(None, ge=1, le=1000, description="Default: one per live node.")


class StepOut(BaseModel):
    name: str
    type: str
    after: list[str]
    task_id: str
    status: str = Field(description="waiting | queued | scheduled | running | retrying | succeeded | failed | "
                                    "cancelled | skipped")
    detail: str | None
    node: str | None
    attempts: int
    started_at: str | None
    finished_at: str | None
    error: dict[str, Any] | None
    shard: list[int] | None
    on_parent_failure: str


class WorkflowOut(BaseModel):
    id: str
    name: str
    status: str = Field(description="running | succeeded | failed | cancelled")
    result: Any
    created_at: str | None
    cancelled_at: str | None
    finished_at: str | None
    steps: list[StepOut]
    edges: list[list[str]] = Field(description="[parent, child] pairs: the graph")


class WorkflowPageOut(BaseModel):
    workflows: list[WorkflowOut]
    next_cursor: str | None


class LimitIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rate: StrictStr | None = Field(None, description="kind rate: e.g. '100/m', '50/s', '5/10s'")
    burst: StrictInt | None = Field(None, ge=1, le=100_000, description="kind rate: how many may start at once")
    max_running: StrictInt | None = Field(None, ge=1, le=1_000_000, description="kind concurrency")
    key_param: Text | None = Field(None, max_length=200, description="The param whose value keys the limit")


class LimitOut(BaseModel):
    name: str
    kind: str
    rate_per_s: float | None
    burst: int | None
    max_running: int | None
    key_param: str | None
    source: str = Field(description="code (declared by @app.task) | manual (set here or by the CLI)")
    keys: list[dict[str, Any]] = Field(description="Keys in use: slots and parked (concurrency), next start (rate)")


class LimitsOut(BaseModel):
    limits: list[LimitOut]


# -- handlers ---------------------------------------------------------------------------------
def _flow(service: TaskService, request: Request) -> FlowService:
    return FlowService(service, request.app.state.settings.heartbeat_s)


@contextmanager
def _body_refused(*errors: type[Exception]) -> Iterator[None]:
    """What ``FlowService`` refuses in the body is an input error (4xx) naming the body."""
    try:
        yield
    except errors as exc:
        raise ApiInputError(str(exc), ["body"]) from exc


def _workflow_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise WorkflowNotFound(text[:100]) from None


def _not_found(exc: WorkflowNotFound) -> JsonResponse:
    return error_response(404, "not_found", str(exc))


@router.post("/workflows", status_code=201, response_model=None,
             responses={201: {"model": WorkflowOut, "description": "Stored with every step; first steps queued"}})
def submit_workflow(body: WorkflowIn, service: ServiceDep, request: Request) -> JsonResponse:
    """Submit a workflow: a graph of steps, each started once all the steps in its ``after``
    succeeded, with their results in its params (``previous``)."""
    with _body_refused(ValueError, SerializationError):
        view = _flow(service, request).submit_workflow(body.model_dump(exclude_none=True)
                                                       | {"steps": [s.model_dump(exclude_unset=True)
                                                                    for s in body.steps]})
    return JsonResponse(view, status_code=201)


@router.post("/workflows:broadcast", status_code=201, response_model=None,
             responses={201: {"model": WorkflowOut, "description": "One step per live node"}})
def broadcast(body: FanOutIn, service: ServiceDep, request: Request) -> JsonResponse:
    """Run the task once on every live node of its queue: one step per node, with the node."""
    with _body_refused(ValueError, SerializationError):
        view = _flow(service, request).broadcast(body.type, body.params, **_options(body))
    return JsonResponse(view, status_code=201)


@router.post("/workflows:sharded", status_code=201, response_model=None,
             responses={201: {"model": WorkflowOut, "description": "One step per shard"}})
def sharded(body: ShardedIn, service: ServiceDep, request: Request) -> JsonResponse:
    """Run ``shards`` copies spread over the live nodes; each gets its ``shard_index``/``shard_total``."""
    with _body_refused(ValueError, SerializationError):
        view = _flow(service, request).shard(body.type, body.params, shards=body.shards, **_options(body))
    return JsonResponse(view, status_code=201)


def _options(body: _Options) -> dict[str, Any]:
    return {k: v for k, v in body.model_dump().items() if k in ("queue", "priority", "max_attempts", "timeout")
            and v is not None}


@router.get("/workflows", response_model=None,
            responses={200: {"model": WorkflowPageOut, "description": "Workflows, newest first"}})
def list_workflows(service: ServiceDep, request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 20,
                   cursor: Annotated[uuid.UUID | None, Query(description="next_cursor of the previous page")] = None,
                   ) -> JsonResponse:
    views = _flow(service, request).list_workflows(limit, cursor)
    return JsonResponse({"workflows": views,
                         "next_cursor": views[-1]["id"] if len(views) == limit else None})


@router.get("/workflows/{workflow_id}", response_model=None,
            responses={200: {"model": WorkflowOut, "description": "The workflow, its graph and its steps"},
                       **NOT_FOUND})
def get_workflow(workflow_id: str, service: ServiceDep, request: Request) -> JsonResponse:
    """A workflow with its graph (``edges``) and each step's status, node and error."""
    try:
        return JsonResponse(_flow(service, request).get_workflow(_workflow_id(workflow_id)))
    except WorkflowNotFound as exc:
        return _not_found(exc)


@router.post("/workflows/{workflow_id}/cancel", response_model=None,
             responses={200: {"model": WorkflowOut, "description": "Cancelled"}, **NOT_FOUND})
def cancel_workflow(workflow_id: str, service: ServiceDep, request: Request) -> JsonResponse:
    """Cancel what has not started (waiting steps, and queued, scheduled or retrying ones);
    running steps finish, and nothing after them starts."""
    try:
        return JsonResponse(_flow(service, request).cancel_workflow(_workflow_id(workflow_id)))
    except WorkflowNotFound as exc:
        return _not_found(exc)


@router.get("/limits", response_model=None, responses={200: {"model": LimitsOut, "description": "Limits"}})
def list_limits(service: ServiceDep, settings: SettingsDep) -> JsonResponse:
    """Rate and concurrency limits, with their keys in use."""
    return JsonResponse({"limits": FlowService(service, settings.heartbeat_s).limits()})


@router.put("/limits/{name}/{kind}", response_model=None,
            responses={200: {"model": LimitOut, "description": "Set (an operator's setting wins over code)"}})
def set_limit(name: str, kind: Literal["rate", "concurrency"], body: LimitIn, service: ServiceDep,
              settings: SettingsDep) -> JsonResponse:
    """Set the rate or concurrency limit of task type ``name`` (overrides the one in code)."""
    with _body_refused(ValueError):
        limit = FlowService(service, settings.heartbeat_s).set_limit(
            name, kind, rate=body.rate, burst=body.burst, max_running=body.max_running, key_param=body.key_param)
    return JsonResponse(limit)


@router.delete("/limits/{name}/{kind}", status_code=204, response_model=None,
               responses={404: {"model": ErrorOut, "description": "No such limit"}})
def remove_limit(name: str, kind: Literal["rate", "concurrency"], service: ServiceDep,
                 settings: SettingsDep) -> JsonResponse:
    """Remove a stored limit (one declared in code comes back when a worker with it starts)."""
    if not FlowService(service, settings.heartbeat_s).remove_limit(name, kind):
        return error_response(404, "not_found", f"no {kind} limit for {name!r}")
    return JsonResponse(None, status_code=204)
