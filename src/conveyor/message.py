"""The task message on the wire: a JSON object, encoded and decoded here and nowhere else.

See docs/protocol.md and protocol/task-message.schema.json. JSON only, never pickle.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from conveyor import validation
from conveyor.errors import SerializationError
from conveyor.model import JSON, Task, TaskStatus, iso, now, parse_iso

PROTOCOL_VERSION = 1
CONTENT_TYPE = "application/json"
MAX_MESSAGE_BYTES = 1024 * 1024  # 1 MiB: larger bodies are dead-lettered, larger params refused
UUID_TEXT = re.compile(validation.UUID_PATTERN)
_INSTANT = re.compile(validation.INSTANT_PATTERN)


# The fields a task message has; any other is ignored (docs/protocol.md: unknown fields).
FIELDS = frozenset({"protocol", "id", "type", "params", "queue", "priority", "attempt", "max_attempts", "timeout",
                    "eta", "trace", "flow"})


@dataclass(frozen=True, slots=True)
class Message:
    id: uuid.UUID
    type: str
    params: dict[str, JSON]
    queue: str = "default"
    priority: int = 0
    attempt: int = 1  # the attempt this delivery is for, from 1
    max_attempts: int = 3
    timeout: float | None = None
    eta: float | None = None
    trace: dict[str, str] = field(default_factory=dict)  # W3C trace context, passed through
    flow: dict[str, JSON] | None = None  # flow control (docs/protocol.md §10): absent for ordinary tasks

    @classmethod
    def for_task(cls, task: Task, trace: dict[str, str] | None = None) -> Message:
        return cls(
            id=task.id, type=task.type, params=task.params, queue=task.queue,
            priority=task.priority, attempt=task.attempts + 1, max_attempts=task.max_attempts,
            timeout=task.timeout, eta=task.eta, trace=trace or {}, flow=task.flow,
        )

    def to_task(self, at: float | None = None) -> Task:
        """A task record for a message that reached a worker without going through a store
        (a client in another language published it straight to the broker). A future eta makes it
        ``scheduled``, so the claim hands the delivery back until then. ``at``: the store's clock."""
        at = now() if at is None else at
        scheduled = self.eta is not None and self.eta > at
        return Task(
            id=self.id, type=self.type, params=self.params, queue=self.queue,
            priority=self.priority, attempts=self.attempt - 1, max_attempts=self.max_attempts,
            timeout=self.timeout, eta=self.eta if scheduled else None,
            status=TaskStatus.SCHEDULED if scheduled else TaskStatus.QUEUED,
            created_at=at, queued_at=None if scheduled else at, flow=self.flow,
        )


# orjson would quietly turn datetimes, dataclasses and str subclasses into JSON; a value that is
# not plain JSON must be refused instead, so the handler gets exactly what was submitted.
_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def _refuse(value: Any) -> Any:
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    """JSON-encode, or raise SerializationError naming what is not JSON."""
    try:
        return orjson.dumps(value, default=_refuse, option=_STRICT)
    except TypeError as exc:
        raise SerializationError(f"not JSON-serializable: {exc}") from exc


def loads(body: bytes | str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"not JSON: {exc}") from exc


def encode(message: Message) -> bytes:
    fields = {
        "protocol": PROTOCOL_VERSION,
        "id": str(message.id),
        "type": message.type,
        "params": message.params,
        "queue": message.queue,
        "priority": message.priority,
        "attempt": message.attempt,
        "max_attempts": message.max_attempts,
        "timeout": message.timeout,
        "eta": iso(message.eta),
        "trace": message.trace,
    }
    if message.flow is not None:  # only flow-controlled tasks carry it: ordinary bodies are unchanged
        fields["flow"] = message.flow
    body = dumps(fields)
    if len(body) > MAX_MESSAGE_BYTES:
        raise SerializationError(f"message is {len(body)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    return body


def decode(body: bytes) -> Message:
    """Parse and validate a message body; raise SerializationError saying what is wrong.
    Checks what protocol/task-message.schema.json says, with the bounds of ``validation``
    (unknown fields are ignored), so a body the store would refuse never gets that far."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise SerializationError(f"message is {len(body)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SerializationError("body must be a JSON object")
    try:
        msg = _from_dict(data)
        if validation.may_hold_nul(body):
            validation.check_params(msg.params)
            validation.check_json(msg.trace, "trace")
            validation.check_json(msg.flow, "flow")  # stored with the task: PostgreSQL refuses NUL
    except KeyError as exc:
        raise SerializationError(f"invalid task message: missing field {exc}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise SerializationError(f"invalid task message: {exc}") from exc
    return msg


def _from_dict(data: dict[str, Any]) -> Message:
    version = data["protocol"]
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ValueError(f"unsupported protocol version {version!r}")
    task_id = data["id"]
    if not isinstance(task_id, str) or not UUID_TEXT.fullmatch(task_id):
        raise ValueError("id must be a UUID string (8-4-4-4-12 hex)")
    params = data["params"]
    if not isinstance(params, dict):
        raise ValueError("params must be a JSON object")
    eta = data.get("eta")
    if eta is not None and (not isinstance(eta, str) or not _INSTANT.fullmatch(eta)):
        raise ValueError("eta must be an ISO-8601 UTC instant (Z or an offset) or null")
    trace = data.get("trace")
    trace = {} if trace is None else trace
    if not isinstance(trace, dict) or not all(isinstance(v, str) for v in trace.values()):
        raise ValueError("trace must be a JSON object of strings or null")
    flow = data.get("flow")
    if flow is not None and not isinstance(flow, dict):
        raise ValueError("flow must be a JSON object or null")
    return Message(
        id=uuid.UUID(task_id),
        type=validation.check_type(data["type"]),
        params=params,
        queue=validation.check_queue(data["queue"]),
        priority=validation.check_priority(data.get("priority", 0)),
        attempt=validation.check_attempt(data.get("attempt", 1)),
        max_attempts=validation.check_attempt(data.get("max_attempts", 3), "max_attempts"),
        timeout=validation.check_timeout(data.get("timeout")),
        eta=validation.check_eta(parse_iso(eta)),
        trace=trace,
        flow=flow,
    )
