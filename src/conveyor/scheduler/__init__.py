"""The scheduling center: periodic schedules, the HA leader lease, and the node watch.

``conveyor scheduler`` runs ``SchedulerService`` (see ``service.py`` for the design);
``schedules.py`` holds the model and fire-time arithmetic, ``schedule_store.py`` persistence.
"""

from __future__ import annotations

from conveyor.scheduler.schedule_store import (
    DuplicateSchedule,
    ScheduleNotFound,
    ScheduleStore,
    open_schedule_store,
)
from conveyor.scheduler.schedules import InvalidSchedule, Schedule, due_fires, fire_key
from conveyor.scheduler.service import SchedulerService

__all__ = [
    "DuplicateSchedule",
    "InvalidSchedule",
    "Schedule",
    "ScheduleNotFound",
    "ScheduleStore",
    "SchedulerService",
    "due_fires",
    "fire_key",
    "open_schedule_store",
]
