"""Execution nodes: take tasks from queues, run handlers, record outcomes."""

from conveyor.worker.worker import Worker

__all__ = ["Worker"]
