"""Schedule endpoints: list, create, show, change (PATCH), delete and run now.

The schedule store is opened from the app's settings on first use and kept on
``app.state.schedule_store`` (``close_schedule_store`` closes it). Errors use the API's one
body shape: 422 names the field (bad cron, unknown time zone, both or neither of cron and
interval_s), 404 an unknown name, 409 a name already taken.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from conveyor.api.handlers import OpsDep, get_settings
from conveyor.api.schemas import ApiInputError, ErrorOut, JsonResponse, QueueName, TaskType, error_response
from conveyor.config import Settings
from conveyor.scheduler.manual import run_now
from conveyor.scheduler.schedule_store import (
    DuplicateSchedule,
    ScheduleChanged,
    ScheduleNotFound,
    ScheduleStore,
    open_schedule_store,
)
from conveyor.scheduler.schedules import InvalidSchedule, Schedule

router = APIRouter(prefix="/api/v1/schedules", tags=["schedules"])

_open_lock = threading.Lock()
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "No schedule with that name"}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": ErrorOut, "description": "The name is taken"}}


def get_schedule_store(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> ScheduleStore:
    state = request.app.state
    store: ScheduleStore | None = getattr(state, "schedule_store", None)
    if store is None:
        with _open_lock:
            store = getattr(state, "schedule_store", None)
            if store is None:
                store = open_schedule_store(settings.store_url)
                state.schedule_store = store
    return store


def close_schedule_store(app: Any) -> None:
    store: ScheduleStore | None = getattr(app.state, "schedule_store", None)
    if store is not None:
        app.state.schedule_store = None
        store.close()


StoreDep = Annotated[ScheduleStore, Depends(get_schedule_store)]
Misfire = Literal["skip", "run_once"]


class ScheduleIn(BaseModel):
    """A new schedule: give ``cron`` (with an optional ``timezone``) or ``interval_s``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: StrictStr = Field(description="Unique: letters, digits and _ . : @ - (1-150).")
    type: TaskType = Field(description="The task type each fire submits.")
    params: dict[str, Any] = Field(default_factory=dict, description="Task params: a JSON object.")
    cron: StrictStr | None = Field(None, description="5-field cron expression, e.g. '*/5 * * * *'.")
    timezone: StrictStr = Field("UTC", description="IANA time zone of the cron expression.")
    interval_s: StrictFloat | None = Field(None, description="Fire every this many seconds (>= 1).")
    queue: QueueName | None = None
    priority: StrictInt | None = Field(None, ge=0, le=9)
    enabled: StrictBool = True
    misfire: Misfire = Field("skip", description="After downtime: skip missed fires, or run_once.")


class SchedulePatch(BaseModel):
    """Fields to change; setting ``cron`` clears ``interval_s`` and the other way round."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: TaskType | None = None
    params: dict[str, Any] | None = None
    cron: StrictStr | None = None
    timezone: StrictStr | None = None
    interval_s: StrictFloat | None = None
    queue: QueueName | None = None
    priority: StrictInt | None = Field(None, ge=0, le=9)
    enabled: StrictBool | None = None
    misfire: Misfire | None = None


class ScheduleOut(BaseModel):
    name: str
    type: str
    params: dict[str, Any]
    cron: str | None
    timezone: str
    interval_s: float | None
    queue: str | None
    priority: int | None
    enabled: bool
    misfire: str
    next_fire_at: str | None = Field(description="ISO-8601, UTC")
    last_fired_at: str | None
    created_at: str | None
    updated_at: str | None


class SchedulesOut(BaseModel):
    schedules: list[ScheduleOut]


def _invalid(exc: InvalidSchedule) -> ApiInputError:
    return ApiInputError(str(exc), [exc.field])


def _not_found(name: str) -> JsonResponse:
    return error_response(404, "not_found", f"unknown schedule {name!r}", ["name"])


@router.get("", response_model=SchedulesOut)
def list_schedules(store: StoreDep) -> JsonResponse:
    return JsonResponse({"schedules": [s.to_dict() for s in store.all()]})


@router.post("", status_code=201, response_model=ScheduleOut, responses=CONFLICT)
def create_schedule(body: ScheduleIn, store: StoreDep) -> JsonResponse:
    try:
        schedule = Schedule.new(body.name, body.type, **body.model_dump(exclude={"name", "type"}))
    except InvalidSchedule as exc:
        raise _invalid(exc) from exc
    try:
        stored = store.create(schedule)
    except DuplicateSchedule as exc:
        return error_response(409, "conflict", str(exc), ["name"])
    return JsonResponse(stored.to_dict(), status_code=201)


@router.get("/{name}", response_model=ScheduleOut, responses=NOT_FOUND)
def get_schedule(name: str, store: StoreDep) -> JsonResponse:
    try:
        return JsonResponse(store.get(name).to_dict())
    except ScheduleNotFound:
        return _not_found(name)


@router.patch("/{name}", response_model=ScheduleOut, responses=NOT_FOUND)
def patch_schedule(name: str, body: SchedulePatch, store: StoreDep) -> JsonResponse:
    changes = body.model_dump(include=body.model_fields_set)
    for key in ("type", "params", "timezone", "enabled", "misfire"):
        if key in changes and changes[key] is None:
            raise ApiInputError(f"{key}: must not be null", [key])
    for _ in range(5):
        try:
            updated = store.update(store.get(name).redefine(**changes))
        except ScheduleNotFound:
            return _not_found(name)
        except InvalidSchedule as exc:
            raise _invalid(exc) from exc
        except ScheduleChanged:
            continue
        return JsonResponse(updated.to_dict())
    return error_response(409, "conflict", f"schedule {name!r} keeps changing; try again", ["name"])


@router.delete("/{name}", status_code=204, responses=NOT_FOUND)
def delete_schedule(name: str, store: StoreDep) -> Response:
    try:
        store.delete(name)
    except ScheduleNotFound:
        return _not_found(name)
    return Response(status_code=204)


@router.post("/{name}/run", status_code=201, responses=NOT_FOUND)
def run_schedule_now(name: str, store: StoreDep, ops: OpsDep) -> JsonResponse:
    """Submit one task of the schedule now (its own fire times are left as they are)."""
    try:
        schedule = store.get(name)
    except ScheduleNotFound:
        return _not_found(name)
    return JsonResponse(run_now(ops.service, schedule).to_dict(), status_code=201)
