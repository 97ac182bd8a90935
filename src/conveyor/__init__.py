"""Conveyor: distributed task scheduling and dispatch for microservices."""

from conveyor.app import Conveyor, TaskHandle
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
)
from conveyor.model import Task, TaskStatus

__version__ = "0.1.0"

__all__ = [
    "Abort",
    "Conveyor",
    "ConveyorError",
    "Retry",
    "SerializationError",
    "Task",
    "TaskContext",
    "TaskFailed",
    "TaskHandle",
    "TaskNotFound",
    "TaskStatus",
    "TaskTimeout",
    "UnknownTask",
    "__version__",
    "current_task",
]
