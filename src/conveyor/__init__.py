"""Conveyor: distributed task scheduling and dispatch for microservices."""

from conveyor.app import Conveyor, TaskHandle, WorkflowHandle
from conveyor.context import TaskContext, current_task
from conveyor.errors import (
    Abort,
    ConveyorError,
    Retry,
    SerializationError,
    TaskFailed,
    TaskNotFound,
    TaskTimeout,
    UnknownTask,
    WorkflowFailed,
)
from conveyor.flow.canvas import Signature, Workflow, chain, chord, group
from conveyor.model import Task, TaskStatus

__version__ = "0.1.0"

__all__ = [
    "Abort",
    "Conveyor",
    "ConveyorError",
    "Retry",
    "SerializationError",
    "Signature",
    "Task",
    "TaskContext",
    "TaskFailed",
    "TaskHandle",
    "TaskNotFound",
    "TaskStatus",
    "TaskTimeout",
    "UnknownTask",
    "Workflow",
    "WorkflowFailed",
    "WorkflowHandle",
    "__version__",
    "chain",
    "chord",
    "current_task",
    "group",
]
