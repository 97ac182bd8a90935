"""What a running handler may ask about its own task: ``conveyor.current_task()``."""

from __future__ import annotations

import contextvars
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from conveyor.errors import ConveyorError


@dataclass(frozen=True, slots=True)
class TaskContext:
    id: uuid.UUID
    type: str
    attempt: int  # from 1
    max_attempts: int
    node: str
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    # Flow control (docs/flow-control.md): the shard of a sharded task, the workflow step of a step.
    shard_index: int | None = None
    shard_total: int | None = None
    workflow_id: str | None = None
    step: str | None = None

    @property
    def cancelled(self) -> bool:
        """True once someone cancelled this task: a cooperative handler stops early."""
        return self.cancel_requested.is_set()


_current: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("conveyor_task")


def current_task() -> TaskContext:
    try:
        return _current.get()
    except LookupError:
        raise ConveyorError("current_task() called outside a running task") from None


def flow_context(flow: dict[str, Any] | None) -> dict[str, Any]:
    """The ``TaskContext`` fields a task's ``flow`` gives (none for an ordinary task)."""
    if not flow:
        return {}
    shard = flow.get("shard")
    fields: dict[str, Any] = {"workflow_id": flow.get("workflow"), "step": flow.get("step")}
    if isinstance(shard, list) and len(shard) == 2:
        fields.update(shard_index=int(shard[0]), shard_total=int(shard[1]))
    return fields


def set_current(ctx: TaskContext) -> contextvars.Token[TaskContext]:
    return _current.set(ctx)


def reset_current(token: contextvars.Token[TaskContext]) -> None:
    _current.reset(token)
