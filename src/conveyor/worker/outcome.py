"""How an attempt ended, decided from what the handler returned or raised (no I/O here).

succeeded -> the result (it must be JSON); a failure with attempts left -> ``retrying`` after a
backoff (the store writes it with an outbox intent: a new message for the next attempt); an
``Abort``, a non-JSON result or no attempts left -> ``failed``. An unknown task type fails at once.
"""

from __future__ import annotations

from typing import Any

from conveyor import message
from conveyor.errors import Abort, HandlerError, Retry, SerializationError
from conveyor.model import Task, TaskStatus
from conveyor.retry import retry_delay_s, should_retry
from conveyor.store.base import Outcome
from conveyor.task import TaskOptions, TaskSpec
from conveyor.worker.executor import error_info


def decide_outcome(task: Task, spec: TaskSpec | None, result: Any, exc: BaseException | None,
                   node: str) -> Outcome:
    if spec is None:
        reason = f"unknown task type {task.type!r}: no handler registered on node {node}"
        return Outcome(task.id, task.attempts, TaskStatus.FAILED,
                       error={"type": "unknown_task", "message": reason, "traceback": None},
                       detail="unknown task type")
    if exc is None:
        try:
            return Outcome(task.id, task.attempts, TaskStatus.SUCCEEDED, result=_as_json(result))
        except SerializationError as not_json:
            exc = not_json
    error, retryable, delay = classify(task, spec.options, exc)
    if retryable:
        return Outcome(task.id, task.attempts, TaskStatus.RETRYING, error=error, retry_in_s=delay,
                       detail=f"{error['type']}: retry in {delay:.2f} s", publish=True)
    return Outcome(task.id, task.attempts, TaskStatus.FAILED, error=error, detail=error["type"])


def _as_json(result: Any) -> Any:
    """The result as the store will keep it: plain JSON types, or SerializationError."""
    if result is None or isinstance(result, bool | int | str):
        return result  # the common cases need no round trip
    return message.loads(message.dumps(result))


def classify(task: Task, options: TaskOptions, exc: BaseException) -> tuple[dict[str, Any], bool, float]:
    """(error record, retry?, delay) for an exception from a thread, loop or child process."""
    if isinstance(exc, HandlerError):
        info = exc.info
        error = {k: info.get(k) for k in ("type", "message", "traceback")}
        if info.get("abort"):
            return error, False, 0.0
        stand_in: BaseException = Retry(info["retry_delay_s"]) if info.get("retry_delay_s") else exc
        return error, should_retry(task, stand_in), retry_delay_s(task, stand_in, options)
    error = error_info(exc)
    if isinstance(exc, SerializationError):
        return error, False, 0.0
    return error, should_retry(task, exc) and not isinstance(exc, Abort), retry_delay_s(task, exc, options)
