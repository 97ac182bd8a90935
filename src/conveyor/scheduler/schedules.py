"""Schedules: what to submit and when. Cron (5 fields, in a time zone) or a fixed interval.

Fire times are POSIX seconds computed from the definition alone, so every replica computes the
same ones (the idempotency key of a fire is derived from its time):

- cron: croniter over wall-clock time in ``timezone`` (zoneinfo). Across DST changes, a wall
  time that does not exist (spring forward) fires at the first instant after the gap; a wall
  time that happens twice (fall back) fires once for a fixed-time job (minute and hour fields
  without ``*``, like Vixie cron) and twice for a wildcard job (it follows elapsed time).
- interval: multiples of ``interval_s`` since the Unix epoch.

``due_fires`` is the pure planning step the scheduler loop runs: given the stored
``next_fire_at`` and ``now`` it says which fire times to submit and the new ``next_fire_at``.
A fire time later than ``grace_s`` is a misfire (the scheduler was down); the schedule's
misfire policy then either drops those (``skip``) or fires one catch-up run for all of them
(``run_once``, keyed by the latest missed time). Fires late by less than ``grace_s`` (a leader
handover, a slow tick) are all submitted.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from conveyor.errors import ConfigError, SerializationError
from conveyor.message import dumps, loads
from conveyor.model import iso, now

MISFIRE_POLICIES = ("skip", "run_once")
MIN_INTERVAL_S = 1.0  # fire times are keyed by whole seconds
MAX_FIRES_PER_TICK = 1000  # bound on late fires submitted at once
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,149}$")


class InvalidSchedule(ConfigError, ValueError):
    """A schedule definition is wrong; ``field`` names the offending field (for HTTP 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Schedule:
    """A periodic submission of one task type. Build with ``Schedule.new`` (validates)."""

    name: str
    type: str
    params: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    timezone: str = "UTC"
    interval_s: float | None = None
    queue: str | None = None
    priority: int | None = None
    enabled: bool = True
    misfire: str = "skip"
    next_fire_at: float | None = None  # the first fire time not yet submitted
    last_fired_at: float | None = None  # the latest fire time submitted
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    version: int = 0  # bumped by every store write; the compare-and-set token

    @classmethod
    def new(cls, name: str, type: str, *, at: float | None = None, **fields: Any) -> Schedule:
        """A validated schedule whose first fire is the first fire time after ``at`` (now)."""
        at = now() if at is None else at
        schedule = cls(name=name, type=type, created_at=at, updated_at=at, **fields)
        schedule.validate()
        return schedule.replace(next_fire_at=schedule.next_fire(at))

    def replace(self, **changes: Any) -> Schedule:
        return dataclasses.replace(self, **changes)

    def redefine(self, at: float | None = None, **changes: Any) -> Schedule:
        """Apply definition changes (validated); a new timing restarts from ``at``."""
        at = now() if at is None else at
        if changes.get("cron") is not None:
            changes.setdefault("interval_s", None)
        if changes.get("interval_s") is not None:
            changes.setdefault("cron", None)
        updated = self.replace(updated_at=at, **changes)
        updated.validate()
        timing = ("cron", "timezone", "interval_s", "enabled")
        if any(getattr(updated, k) != getattr(self, k) for k in timing) or updated.next_fire_at is None:
            updated = updated.replace(next_fire_at=updated.next_fire(at))
        return updated

    def same_definition(self, other: Schedule) -> bool:
        keys = ("type", "params", "cron", "timezone", "interval_s", "queue", "priority", "misfire")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    # -- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidSchedule("name", "1-150 characters: letters, digits and _ . : @ - "
                                  "(starting with a letter or digit)")
        if not isinstance(self.type, str) or not self.type.strip() or len(self.type) > 200:
            raise InvalidSchedule("type", "must be a non-empty string of at most 200 characters")
        _check_params(self.params)
        if (self.cron is None) == (self.interval_s is None):
            raise InvalidSchedule("cron", "give exactly one of cron or interval_s")
        if self.cron is not None:
            _check_cron(self.cron)
        _zone("timezone", self.timezone)
        if self.interval_s is not None and not _valid_interval(self.interval_s):
            raise InvalidSchedule("interval_s", f"must be a number of seconds >= {MIN_INTERVAL_S:g}")
        if self.misfire not in MISFIRE_POLICIES:
            raise InvalidSchedule("misfire", f"must be one of {', '.join(MISFIRE_POLICIES)}")
        if self.priority is not None and (isinstance(self.priority, bool) or self.priority not in range(10)):
            raise InvalidSchedule("priority", "must be an integer between 0 and 9")
        if self.queue is not None and (not isinstance(self.queue, str) or not self.queue.strip()):
            raise InvalidSchedule("queue", "must be a non-empty string")

    # -- fire times ---------------------------------------------------------------------
    def next_fire(self, after: float) -> float:
        """The first fire time strictly after ``after``."""
        if self.interval_s is not None:
            return (math.floor(after / self.interval_s) + 1) * self.interval_s
        assert self.cron is not None
        tz = _zone("timezone", self.timezone)
        it = croniter(self.cron, datetime.fromtimestamp(after, tz))
        while True:
            fire: datetime = it.get_next(datetime)
            if not self._repeated_wall_time(fire):
                return fire.timestamp()

    def prev_fire(self, before: float) -> float:
        """The latest fire time strictly before ``before``."""
        if self.interval_s is not None:
            return (math.ceil(before / self.interval_s) - 1) * self.interval_s
        assert self.cron is not None
        tz = _zone("timezone", self.timezone)
        it = croniter(self.cron, datetime.fromtimestamp(before, tz))
        while True:
            fire: datetime = it.get_prev(datetime)
            if not self._repeated_wall_time(fire):
                return fire.timestamp()

    def _repeated_wall_time(self, fire: datetime) -> bool:
        """True for the second occurrence (fold=1) of an ambiguous wall time of a fixed-time job."""
        if fire.fold == 0 or fire.replace(fold=0).utcoffset() == fire.utcoffset():
            return False
        assert self.cron is not None
        minute, hour = self.cron.split()[:2]
        return not (minute.startswith("*") or hour.startswith("*"))

    # -- views --------------------------------------------------------------------------
    def idempotency_key(self, fire_at: float) -> str:
        return fire_key(self.name, fire_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "type": self.type, "params": self.params, "cron": self.cron,
            "timezone": self.timezone, "interval_s": self.interval_s, "queue": self.queue,
            "priority": self.priority, "enabled": self.enabled, "misfire": self.misfire,
            "next_fire_at": iso(self.next_fire_at), "last_fired_at": iso(self.last_fired_at),
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
        }


def fire_key(name: str, fire_at: float) -> str:
    return f"schedule:{name}:{int(fire_at)}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What one tick does for one schedule: submit ``fires`` (oldest first), then store
    ``next_fire_at``. ``skipped`` counts misfires dropped or folded into a catch-up run."""

    fires: list[float]
    next_fire_at: float
    skipped: int = 0


def due_fires(schedule: Schedule, at: float, grace_s: float) -> Plan | None:
    """Plan the fires of ``schedule`` due at ``at``; None when nothing is due."""
    nxt = schedule.next_fire_at
    if not schedule.enabled or nxt is None or nxt > at:
        return None
    fires: list[float] = []
    skipped = 0
    cutoff = at - grace_s
    if nxt <= cutoff:  # misfired: the scheduler was away longer than the grace
        first_in_grace = schedule.next_fire(cutoff)
        latest_missed = schedule.prev_fire(first_in_grace)
        skipped = _count_between(schedule, nxt, latest_missed)
        if schedule.misfire == "run_once":
            fires.append(latest_missed)
            skipped -= 1
        nxt = first_in_grace
    while nxt <= at and len(fires) < MAX_FIRES_PER_TICK:
        fires.append(nxt)
        nxt = schedule.next_fire(nxt)
    if nxt <= at:  # over the bound: drop the rest rather than flood the queue
        nxt = schedule.next_fire(at)
    return Plan(fires, nxt, skipped)


def _count_between(schedule: Schedule, first: float, last: float, cap: int = 10_000) -> int:
    """Fire times in [first, last] (for logging; capped)."""
    if schedule.interval_s is not None:
        return round((last - first) / schedule.interval_s) + 1
    count, t = 1, first
    while t < last and count < cap:
        t = schedule.next_fire(t)
        count += 1
    return count


def _valid_interval(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        and value >= MIN_INTERVAL_S


def _check_params(params: object) -> None:
    if not isinstance(params, dict):
        raise InvalidSchedule("params", "must be a JSON object")
    try:
        loads(dumps(params))
    except SerializationError as exc:
        raise InvalidSchedule("params", f"must be JSON: {exc}") from exc


def _check_cron(expr: object) -> None:
    if not isinstance(expr, str) or len(expr.split()) != 5:
        raise InvalidSchedule("cron", "must be a 5-field cron expression (minute hour day month weekday)")
    if not croniter.is_valid(expr):
        raise InvalidSchedule("cron", f"invalid cron expression {expr!r}")


@lru_cache(maxsize=64)
def _cached_zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _zone(field_name: str, name: object) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise InvalidSchedule(field_name, "must be an IANA time zone name such as Europe/Paris")
    try:
        return _cached_zone(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidSchedule(field_name, f"unknown time zone {name!r}") from exc


def check_timezone(name: str) -> None:
    """Raise InvalidSchedule("timezone") unless ``name`` is a known IANA zone."""
    _zone("timezone", name)
