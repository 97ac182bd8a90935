"""What an operator does to a schedule by hand: run it now, and look at its recent fires.

"Run now" submits one task as a fire would, with the idempotency key
``schedule:NAME:manual:MILLISECONDS`` (a double click within the same millisecond is one
run); it leaves the schedule's own fire times alone. Recent fires are found by their keys
(``fire_key``), one indexed lookup each, so listing them costs nothing on a big store.
"""

from __future__ import annotations

import time
from typing import Any

from conveyor.errors import TaskNotFound
from conveyor.model import Task
from conveyor.scheduler.schedules import Schedule, fire_key
from conveyor.service import SubmitRequest, TaskService
from conveyor.store.queries import TaskQueries, TaskSearch


def run_now(tasks: TaskService, schedule: Schedule, at: float | None = None) -> Task:
    """Submit one task of ``schedule`` now; returns it."""
    stamp = int((at or time.time()) * 1000)
    request = SubmitRequest(type=schedule.type, params=schedule.params, queue=schedule.queue,
                            priority=schedule.priority, idempotency_key=f"schedule:{schedule.name}:manual:{stamp}")
    task, _ = tasks.submit(request)
    return task


def recent_fires(queries: TaskQueries, schedule: Schedule, count: int = 3) -> list[dict[str, Any]]:
    """The last ``count`` fire times up to ``last_fired_at``, each with its task (when stored)."""
    fires: list[dict[str, Any]] = []
    at = schedule.last_fired_at
    while at is not None and len(fires) < count:
        page = queries.search(TaskSearch(idempotency_key=fire_key(schedule.name, at)), limit=1)
        task = page.tasks[0] if page.tasks else None
        fires.append({"fire_at": at, "task_id": str(task.id) if task else None,
                      "status": task.status.value if task else None})
        try:
            previous = schedule.prev_fire(at)
        except (ValueError, TaskNotFound):
            break
        if previous >= at or (schedule.created_at and previous < schedule.created_at - 1):
            break
        at = previous
    return fires
