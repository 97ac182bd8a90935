"""Request and response models of the HTTP API, and the one error -> HTTP status table.

Requests are validated here (types are strict: ``"5"`` is not a priority) so a bad body is
refused with a 422 that names its field before anything reaches ``TaskService``. Response
models document the JSON the handlers build with ``Task.to_dict()`` (for the OpenAPI spec);
handlers return that JSON directly rather than re-validating it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)

from conveyor import message
from conveyor.config import mask_secrets
from conveyor.errors import (
    BrokerError,
    ConcurrentUpdate,
    InvalidTransition,
    SerializationError,
    StoreError,
    TaskNotFound,
    UnknownTask,
)
from conveyor.model import TaskStatus
from conveyor.service import SubmitRequest
from conveyor.validation import (
    MAX_ATTEMPTS,
    MAX_DELAY_S,
    MAX_KEY_LENGTH,
    MAX_PRIORITY,
    MAX_TIMEOUT_S,
    MAX_TYPE_LENGTH,
    QUEUE_PATTERN,
    check_json,
    check_text,
)

MAX_BATCH = 1000
MAX_ETA = datetime(9000, 1, 1, tzinfo=UTC)


# -- errors ---------------------------------------------------------------------------------
class ApiInputError(Exception):
    """Input refused after schema validation (by TaskService); ``fields`` name the culprits."""

    def __init__(self, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or []


@dataclass(frozen=True, slots=True)
class ErrorKind:
    status: int
    type: str


# The one mapping from exceptions to HTTP statuses, most specific first. Anything not listed
# is a server fault (500, logged with its traceback).
ERROR_STATUS: tuple[tuple[type[Exception], ErrorKind], ...] = (
    (TaskNotFound, ErrorKind(404, "not_found")),
    (InvalidTransition, ErrorKind(409, "conflict")),
    (ConcurrentUpdate, ErrorKind(409, "conflict")),
    (ApiInputError, ErrorKind(422, "validation")),
    (SerializationError, ErrorKind(422, "validation")),
    (UnknownTask, ErrorKind(422, "validation")),
    (StoreError, ErrorKind(503, "unavailable")),
    (BrokerError, ErrorKind(503, "unavailable")),
)
SERVER_FAULT = ErrorKind(500, "server")


def error_kind(exc: BaseException) -> ErrorKind:
    for cls, kind in ERROR_STATUS:
        if isinstance(exc, cls):
            return kind
    return SERVER_FAULT


class JsonResponse(JSONResponse):
    """JSON via orjson, the codec the rest of Conveyor uses (compact, fast on big pages)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return message.dumps(content)


def error_response(status: int, type_: str, text: str, fields: list[str] | None = None,
                   headers: dict[str, str] | None = None) -> JsonResponse:
    text = mask_secrets(text.encode("utf-8", "replace").decode("utf-8"))  # it may quote a mangled path, or a URL
    body = {"error": {"type": type_, "message": text, "fields": fields or []}}
    return JsonResponse(body, status_code=status, headers=headers)


# -- request models -------------------------------------------------------------------------
def _clean_text(value: str) -> str:
    """Refuse what some backends cannot store (PostgreSQL: NUL; every driver: lone surrogates)."""
    try:
        return check_text(value, "value", allow_empty=True)
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix("value ")) from None


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _json_params(value: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON only: NaN, Infinity (and 1e400, which parses as Infinity) are refused rather
    than sent on as null; so are NUL characters, which PostgreSQL cannot store."""
    try:
        check_json(value, "params")
        message.dumps(value)
    except (ValueError, SerializationError) as exc:
        raise ValueError(str(exc).removeprefix("params ")) from None
    return value


def _iso_string(value: object) -> object:
    if value is not None and not isinstance(value, str):
        raise ValueError("must be an ISO-8601 date-time string, e.g. 2030-01-01T12:00:00Z")
    return value


def _utc_in_range(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # naive means UTC
    if not datetime(1970, 1, 1, tzinfo=UTC) <= value < MAX_ETA:
        raise ValueError("must be between 1970 and 9000")
    return value


Text = Annotated[StrictStr, AfterValidator(_clean_text)]
TaskType = Annotated[Text, Field(min_length=1, max_length=MAX_TYPE_LENGTH), AfterValidator(_non_blank)]
QueueName = Annotated[StrictStr, Field(pattern=QUEUE_PATTERN)]
IdempotencyKey = Annotated[Text, Field(min_length=1, max_length=MAX_KEY_LENGTH)]
Eta = Annotated[datetime | None, BeforeValidator(_iso_string), AfterValidator(_utc_in_range)]
FilterText = Annotated[Text, Field(max_length=MAX_TYPE_LENGTH)]


class TaskIn(BaseModel):
    """One task to submit. Options left out take the task type's defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: TaskType = Field(description="The task type (handler name), e.g. 'email.send'.")
    params: Annotated[dict[str, Any], AfterValidator(_json_params)] = Field(
        default_factory=dict, description="Handler parameters: a JSON object.")
    queue: QueueName | None = Field(None, description="Queue name; default: the type's queue.")
    priority: StrictInt | None = Field(None, ge=0, le=MAX_PRIORITY, description="0-9, higher runs first.")
    delay: StrictFloat | None = Field(None, ge=0, le=MAX_DELAY_S,
                                      description="Run not before this many seconds from now.")
    eta: Eta = Field(None, description="Run not before this ISO-8601 time (naive means UTC). "
                                       "Give delay or eta, not both.")
    max_attempts: StrictInt | None = Field(None, ge=1, le=MAX_ATTEMPTS)
    timeout: StrictFloat | None = Field(None, gt=0, le=MAX_TIMEOUT_S, description="Seconds per attempt.")
    idempotency_key: IdempotencyKey | None = Field(
        None, description="A repeated key returns the first task (HTTP 200) instead of a new one.")
    unique_key: IdempotencyKey | None = Field(
        None, description="While a task with this key is waiting or running, a submit returns it (HTTP 200) "
                          "instead of a new one; free again once it finished (docs/flow-control.md).")
    route: Literal["fair", "key"] | None = Field(
        None, description="fair (any worker of the queue) or key (the node a hash of route_key's param picks); "
                          "default: the type's. Broadcast and sharded: POST /api/v1/workflows:broadcast|sharded.")
    route_key: FilterText | None = Field(None, description="route=key: the param whose value picks the node.")

    @field_validator("eta")
    @classmethod
    def _not_with_delay(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is not None and info.data.get("delay") is not None:
            raise ValueError("give either delay or eta, not both")
        return value

    def to_request(self) -> SubmitRequest:
        return SubmitRequest(
            type=self.type, params=self.params, queue=self.queue, priority=self.priority,
            eta=self.eta.timestamp() if self.eta else None, delay_s=self.delay,
            max_attempts=self.max_attempts, timeout=self.timeout, idempotency_key=self.idempotency_key,
            unique_key=self.unique_key, route=self.route, route_key=self.route_key,
        )


def _batch_size(value: object) -> object:
    # Checked before the items are validated, so an oversized batch costs nothing more.
    if isinstance(value, list) and len(value) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} tasks per batch (got {len(value)})")
    return value


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: Annotated[list[TaskIn], BeforeValidator(_batch_size)] = Field(
        min_length=1, description=f"1 to {MAX_BATCH} tasks, submitted in order.")


# -- response models (documentation of the JSON handlers return) ----------------------------
class TaskOut(BaseModel):
    id: str
    type: str
    params: dict[str, Any]
    queue: str
    priority: int
    status: TaskStatus
    attempts: int
    max_attempts: int
    timeout: float | None
    eta: str | None = Field(description="ISO-8601, UTC")
    idempotency_key: str | None
    result: Any
    error: dict[str, Any] | None
    node: str | None
    created_at: str | None
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    crashes: int
    flow: dict[str, Any] | None = Field(
        None, description="Flow control (docs/flow-control.md): unique_key, workflow and step, route, node, shard.")


class SubmittedOut(TaskOut):
    created: bool = Field(description="False when an earlier task held the idempotency key.")


class BatchOut(BaseModel):
    tasks: list[SubmittedOut]


class EventOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    task_id: str
    from_: TaskStatus | None = Field(alias="from")
    to: TaskStatus
    at: str
    node: str | None
    detail: str | None


class TaskDetailOut(TaskOut):
    events: list[EventOut] = Field(description="The timeline, oldest first.")


class TaskPageOut(BaseModel):
    tasks: list[TaskOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end.")


class NodeOut(BaseModel):
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: str | None
    last_heartbeat: str | None
    status: str = Field(description="live | lost | stopped")
    in_flight: int
    done: int


class NodesOut(BaseModel):
    nodes: list[NodeOut]


class QueueOut(BaseModel):
    name: str
    depth: int = Field(description="queued + scheduled + retrying")
    queued: int
    in_flight: int = Field(description="running")
    oldest_waiting_s: float | None = Field(description="age of the oldest queued task, seconds")
    consumers: int = Field(description="live nodes serving the queue")
    slots: int = Field(description="their concurrency, summed")
    succeeded: int
    failed: int
    cancelled: int
    finished_last_60s: int
    rate_per_s: float = Field(description="tasks finished per second over the last 60 s")
    counts: dict[str, int]


class QueuesOut(BaseModel):
    queues: list[QueueOut]


class ErrorDetail(BaseModel):
    type: str = Field(description="validation | not_found | conflict | unauthorized | too_large | "
                                  "unavailable | server | ...")
    message: str
    fields: list[str]


class ErrorOut(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
    413: {"model": ErrorOut, "description": "Body over the size limit"},
    422: {"model": ErrorOut, "description": "Invalid input; `fields` names the culprits"},
    503: {"model": ErrorOut, "description": "Store or broker unreachable"},
}

