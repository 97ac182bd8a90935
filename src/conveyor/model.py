"""The task model: fields, statuses and the one table of allowed status changes.

Times are POSIX seconds (float, UTC) inside Conveyor; the HTTP API and the CLI render them
as ISO-8601. Every status change is checked against ``TRANSITIONS`` here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from conveyor.errors import InvalidTransition

JSON = Any  # a value that json.dumps accepts


class TaskStatus(enum.StrEnum):
    SCHEDULED = "scheduled"  # eta in the future
    QUEUED = "queued"  # in its queue, waiting for a worker
    RUNNING = "running"  # a node owns it (lease in the store)
    RETRYING = "retrying"  # failed an attempt, waiting for its backoff
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


S = TaskStatus
FINAL_STATUSES = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})

# from -> the statuses it may move to. RUNNING -> QUEUED is a lease that expired (the node
# died) or a graceful shutdown returning the task; FAILED/CANCELLED -> QUEUED is a manual retry.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.SCHEDULED: frozenset({S.QUEUED, S.RUNNING, S.FAILED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.FAILED, S.CANCELLED, S.SCHEDULED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.RETRYING, S.CANCELLED, S.QUEUED}),
    S.RETRYING: frozenset({S.QUEUED, S.RUNNING, S.FAILED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
}


def can_transition(from_status: TaskStatus, to_status: TaskStatus) -> bool:
    return to_status in TRANSITIONS[from_status]


def check_transition(task_id: uuid.UUID, from_status: TaskStatus, to_status: TaskStatus) -> None:
    if not can_transition(from_status, to_status):
        raise InvalidTransition(task_id, from_status.value, to_status.value)


def new_task_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit millisecond time, then random bits; ids sort by creation."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return uuid.UUID(int=value)


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def parse_iso(value: str | None) -> float | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class Task:
    """One unit of work and everything known about it. Immutable: changes make a new Task."""

    type: str
    params: dict[str, JSON] = field(default_factory=dict)
    id: uuid.UUID = field(default_factory=new_task_id)
    queue: str = "default"
    priority: int = 0  # 0-9, higher runs first
    status: TaskStatus = TaskStatus.QUEUED
    attempts: int = 0  # attempts started so far
    max_attempts: int = 3
    timeout: float | None = None  # seconds per attempt; None = no limit
    eta: float | None = None  # run not before (scheduled tasks and retry backoff)
    idempotency_key: str | None = None
    result: JSON = None
    error: dict[str, Any] | None = None  # {"type", "message", "traceback"}
    node: str | None = None  # the node that ran (or runs) it
    created_at: float = field(default_factory=now)
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    lease_until: float | None = None  # while running: the owner's lease in the store
    crashes: int = 0  # times its node died while running it
    version: int = 0  # bumped by every store write; the compare-and-set token
    # Flow control (docs/flow-control.md): unique key, workflow step, routing pin or shard; None
    # for an ordinary task. Kept as one optional JSON value so an ordinary task carries nothing.
    flow: dict[str, Any] | None = None

    def replace(self, **changes: Any) -> Task:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON view used by the HTTP API and `--json` output."""
        return {
            "id": str(self.id),
            "type": self.type,
            "params": self.params,
            "queue": self.queue,
            "priority": self.priority,
            "status": self.status.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "eta": iso(self.eta),
            "idempotency_key": self.idempotency_key,
            "result": self.result,
            "error": self.error,
            "node": self.node,
            "created_at": iso(self.created_at),
            "queued_at": iso(self.queued_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "crashes": self.crashes,
            "flow": self.flow,
        }


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One recorded status change: the task's timeline is the list of these."""

    task_id: uuid.UUID
    from_status: TaskStatus | None  # None for creation
    to_status: TaskStatus
    at: float
    node: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": str(self.task_id),
            "from": self.from_status.value if self.from_status else None,
            "to": self.to_status.value,
            "at": iso(self.at),
            "node": self.node,
            "detail": self.detail,
        }


SILENT_HEARTBEATS = 3  # heartbeats a live node may miss before it counts as lost


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """An execution node (worker process) as registered in the store."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    started_at: float
    last_heartbeat: float
    status: str = "live"  # live | lost | stopped
    in_flight: int = 0
    done: int = 0

    def is_silent(self, at: float, heartbeat_s: float) -> bool:
        """A node still registered live that missed ``SILENT_HEARTBEATS`` heartbeats by ``at``."""
        return self.status == "live" and at - self.last_heartbeat > SILENT_HEARTBEATS * heartbeat_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "queues": [q for q in self.queues if not q.startswith("_node.")],  # its own queue: routing's business
            "concurrency": self.concurrency,
            "started_at": iso(self.started_at),
            "last_heartbeat": iso(self.last_heartbeat),
            "status": self.status,
            "in_flight": self.in_flight,
            "done": self.done,
        }


@dataclass(frozen=True, slots=True)
class TaskFilter:
    status: TaskStatus | None = None
    type: str | None = None
    queue: str | None = None
    node: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """A page of tasks, newest first. ``next_cursor`` is the last id, for keyset paging."""

    tasks: list[Task]
    next_cursor: uuid.UUID | None
