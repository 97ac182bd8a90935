"""The whole Conveyor exception tree, in one place.

::

    ConveyorError
      ConfigError                  bad URL, setting or CLI input
      BrokerError
        BrokerConnectionError      the broker cannot be reached
      StoreError
        TaskNotFound               no task with that id was ever submitted
        InvalidTransition          the lifecycle forbids that status change
        ConcurrentUpdate           someone else changed the task first (compare-and-set lost)
        WorkflowNotFound           no workflow with that id was ever submitted
      TaskError
        UnknownTask                no handler registered for a task type
        SerializationError         params/result are not JSON
        TaskTimeout                a handler ran past its timeout
        HandlerError               a handler raised in a child process (--pool process)
      TaskFailed                   raised by TaskHandle.result() for a failed/cancelled task
      WorkflowFailed               raised by WorkflowHandle.result() for a failed/cancelled workflow

    Retry(delay_s)                 raised by handler code: run me again later
    Abort                          raised by handler code: fail now, never retry
"""

from __future__ import annotations

from typing import Any


class ConveyorError(Exception):
    """Root of every error Conveyor raises."""


class ConfigError(ConveyorError):
    pass


class BrokerError(ConveyorError):
    pass


class BrokerConnectionError(BrokerError):
    pass


class StoreError(ConveyorError):
    pass


class StoreRefused(StoreError):
    """The store refused the values themselves (PostgreSQL's SQLSTATE class 22, a data
    exception): the same write gets the same answer, so it is not an outage to wait out."""


class TaskNotFound(StoreError):
    def __init__(self, task_id: object) -> None:
        super().__init__(f"unknown task id {task_id}")
        self.task_id = task_id


class InvalidTransition(StoreError):
    def __init__(self, task_id: object, from_status: str, to_status: str) -> None:
        super().__init__(f"task {task_id}: cannot go from {from_status} to {to_status}")
        self.task_id = task_id
        self.from_status = from_status
        self.to_status = to_status


class ConcurrentUpdate(StoreError):
    def __init__(self, task_id: object) -> None:
        super().__init__(f"task {task_id} was changed concurrently")
        self.task_id = task_id


class WorkflowNotFound(StoreError):
    def __init__(self, workflow_id: object) -> None:
        super().__init__(f"unknown workflow id {workflow_id}")
        self.workflow_id = workflow_id


class TaskError(ConveyorError):
    pass


class UnknownTask(TaskError):
    def __init__(self, task_type: str) -> None:
        super().__init__(f"no handler registered for task type {task_type!r}")
        self.task_type = task_type


class SerializationError(TaskError):
    pass


class TaskTimeout(TaskError):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"task ran longer than its timeout of {timeout_s:g} s")
        self.timeout_s = timeout_s


class HandlerError(TaskError):
    """A handler raised in a child process (``--pool process``); carries the child's error record."""

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info.get("message") or info.get("type") or "handler failed")
        self.info = info


class TaskFailed(ConveyorError):
    """The task ended as failed or cancelled; ``error`` holds the recorded error."""

    def __init__(self, task_id: object, status: str, error: dict[str, Any] | None) -> None:
        message = (error or {}).get("message") or status
        super().__init__(f"task {task_id} {status}: {message}")
        self.task_id = task_id
        self.status = status
        self.error = error


class WorkflowFailed(ConveyorError):
    """The workflow ended as failed or cancelled; ``workflow`` is its view (steps and errors)."""

    def __init__(self, workflow: dict[str, Any]) -> None:
        failed = [s["name"] for s in workflow.get("steps", []) if s.get("status") in ("failed", "cancelled")]
        super().__init__(f"workflow {workflow.get('id')} {workflow.get('status')}"
                         + (f": step(s) {', '.join(failed[:5])} did not succeed" if failed else ""))
        self.workflow = workflow


class Retry(Exception):
    """Raise from a handler to be run again after ``delay_s`` (counts as an attempt)."""

    def __init__(self, delay_s: float | None = None, message: str = "retry requested") -> None:
        super().__init__(message)
        self.delay_s = delay_s


class Abort(Exception):
    """Raise from a handler to fail the task now, with no further attempts."""
