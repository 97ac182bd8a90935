"""Record how an attempt ended, then ack: the outcome is durable before the message goes.

succeeded -> result stored; a failure with attempts left -> ``retrying`` with a backoff and a
delayed message for the next attempt; otherwise -> ``failed``. Retries that will happen log
below ERROR; a task that failed for good logs ERROR.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from conveyor import message
from conveyor.errors import Abort, ConcurrentUpdate, Retry, SerializationError
from conveyor.model import Task, TaskStatus, now
from conveyor.retry import retry_delay_s, should_retry
from conveyor.service import publish_tasks
from conveyor.task import TaskOptions, TaskSpec
from conveyor.worker.executor import error_info
from conveyor.worker.process_pool import HandlerError

if TYPE_CHECKING:
    from conveyor.worker.worker import InFlight, Worker

log = logging.getLogger(__name__)


def record_outcome(worker: Worker, flight: InFlight, spec: TaskSpec | None, result: Any,
                   exc: BaseException | None) -> None:
    with flight.lock:
        if flight.returned:
            return
        if spec is None:
            _fail_unknown(worker, flight)
            return
        if exc is None:
            try:
                result = message.loads(message.dumps(result))
            except SerializationError as error:
                exc = error
        try:
            if exc is None:
                _write(worker, flight.task, TaskStatus.SUCCEEDED, result=result, error=None,
                       finished_at=now(), lease_until=None)
                log.debug("task %s succeeded", flight.task.id, extra=_extra(worker, flight.task, "succeeded"))
            else:
                _record_failure(worker, flight.task, spec.options, exc)
        except ConcurrentUpdate:
            current = worker.app.store.get(flight.task.id)
            log.info("task %s changed while it ran (now %s); outcome dropped", flight.task.id,
                     current.status.value, extra=_extra(worker, flight.task, "superseded"))
        flight.ack()


def _record_failure(worker: Worker, task: Task, options: TaskOptions, exc: BaseException) -> None:
    error, retryable, delay = _classify(task, options, exc)
    if retryable:
        eta = now() + delay
        updated = _write(worker, task, TaskStatus.RETRYING, error=error, eta=eta, lease_until=None,
                         detail=f"{error['type']}: retry in {delay:.2f} s")
        publish_tasks(worker.app.broker, [updated])  # due at its eta, after the backoff
        log.warning("task %s attempt %d failed (%s); retrying in %.2f s", task.id, task.attempts,
                    error["message"], delay, extra=_extra(worker, task, "retry"))
    else:
        _write(worker, task, TaskStatus.FAILED, error=error, finished_at=now(), lease_until=None,
               detail=error["type"])
        log.error("task %s failed after %d attempt(s): %s", task.id, task.attempts, error["message"],
                  extra=_extra(worker, task, "failed"))


def _classify(task: Task, options: TaskOptions, exc: BaseException) -> tuple[dict[str, Any], bool, float]:
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


def _fail_unknown(worker: Worker, flight: InFlight) -> None:
    task = flight.task
    reason = f"unknown task type {task.type!r}: no handler registered on node {worker.node_id}"
    error = {"type": "unknown_task", "message": reason, "traceback": None}
    with contextlib.suppress(ConcurrentUpdate):  # cancelled meanwhile: nothing left to record
        _write(worker, task, TaskStatus.FAILED, error=error, finished_at=now(), lease_until=None,
               detail="unknown task type")
    log.error("task %s: %s; dead-lettered", task.id, reason, extra=_extra(worker, task, "dead_letter"))
    if not flight.acked:
        flight.acked = True
        flight.delivery.dead_letter(reason)


def _write(worker: Worker, task: Task, status: TaskStatus, *, detail: str | None = None, **changes: Any) -> Task:
    return worker.app.store.update(task, status, node=worker.node_id, detail=detail, **changes)


def _extra(worker: Worker, task: Task, action: str) -> dict[str, str]:
    return {"task_id": str(task.id), "queue": task.queue, "worker": worker.node_id, "action": action}
