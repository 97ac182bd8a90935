"""The scheduling center's loop: fire due schedules, and (leader only) watch the nodes.

High availability
-----------------
Any number of ``conveyor scheduler`` processes may run against one store; exactly one, the
lease holder, fires schedules and runs the node watch. The lease is one row of
``scheduler_leases`` (name "scheduler", holder, expires_at), taken or renewed by a single
compare-and-set statement that succeeds only when the row is the caller's or has expired
(``... DO UPDATE ... WHERE holder = me OR expires_at < now``). Every replica tries every
``renew_s`` (default 1 s) with a ``lease_s`` TTL (default 3 s): the holder keeps it, a standby
takes it once the holder stopped renewing, so a killed leader is replaced within about
``lease_s + renew_s``. A clean shutdown releases the lease for an immediate handover.

The holder fires only while its own lease is valid as measured on its monotonic clock from
before its last successful renewal, so a paused or partitioned leader stops before a standby
may start (given wall clocks that agree to well under ``lease_s``; NTP suffices). Should two
replicas still overlap, each fire's idempotency key ``schedule:NAME:EPOCH`` is unique in the
task store: a tick is submitted at most once, whoever races for it.

Firing
------
``tick(at)`` reads the due schedules, plans their fires with ``schedules.due_fires`` (pure:
stored ``next_fire_at`` + ``at`` -> fire times, new ``next_fire_at``), submits one task per fire
through ``TaskService.submit``, then advances ``next_fire_at`` by compare-and-set on the
schedule's version. A crash between the submit and that write makes the next tick submit the
same keys again, which the store deduplicates: ``tick`` is idempotent per fire time. Fires
late by less than ``misfire_grace_s`` (default ``2 * lease_s + 1``) are all submitted, so a
leader handover loses no tick; older ones are misfires, handled by each schedule's policy
(``skip`` drops them, ``run_once`` submits one catch-up run).

Maintenance
-----------
The leader also runs ``maintenance`` (``Operations.maintain``) every ``maintain_s``: it folds
new task events into the statistics and deletes, a few short batches at a time, the tasks
finished longer ago than ``CONVEYOR_RETENTION`` and the nodes silent longer than
``CONVEYOR_NODE_RETENTION``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from conveyor.config import Settings
from conveyor.errors import ConveyorError, SerializationError
from conveyor.flow.hooks import sweep as flow_sweep
from conveyor.model import iso
from conveyor.scheduler.nodewatch import sweep_expired, watch_nodes
from conveyor.scheduler.schedule_store import ScheduleStore
from conveyor.scheduler.schedules import Plan, Schedule, due_fires
from conveyor.service import SubmitRequest, TaskService

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"


@dataclass(frozen=True, slots=True)
class Fired:
    schedule: str
    fire_at: float
    task_id: str
    created: bool  # False: the store already had this fire (another replica, or a replay)


def new_holder_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class SchedulerService:
    def __init__(self, schedules: ScheduleStore, tasks: TaskService, settings: Settings, *,
                 holder: str | None = None, lease_s: float = 3.0, renew_s: float = 1.0,
                 tick_s: float = 0.2, misfire_grace_s: float | None = None,
                 clock: Callable[[], float] = time.time, maintenance: Callable[[], object] | None = None,
                 maintain_s: float = 1.0) -> None:
        if not 0 < renew_s < lease_s:
            raise ValueError("renew_s must be positive and shorter than lease_s")
        self.schedules = schedules
        self.tasks = tasks
        self.settings = settings
        self.holder = holder or new_holder_id()
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.tick_s = tick_s
        self.misfire_grace_s = 2 * lease_s + 1 if misfire_grace_s is None else misfire_grace_s
        self.clock = clock
        self.is_leader = False
        self._valid_until = 0.0  # monotonic end of our lease, as far as we know
        self._next_renew = 0.0
        self._next_watch = 0.0
        self.maintenance = maintenance
        self.maintain_s = maintain_s
        self._next_maintain = 0.0

    # -- firing -------------------------------------------------------------------------
    def tick(self, at: float) -> list[Fired]:
        """Submit every fire due at ``at`` and advance the schedules. Idempotent per fire time."""
        fired: list[Fired] = []
        for schedule in self.schedules.due(at):
            plan = due_fires(schedule, at, self.misfire_grace_s)
            if plan is None:
                continue
            try:
                fired.extend(self._run_plan(schedule, plan))
            except ConveyorError as exc:  # store/broker trouble: this schedule retries next tick
                log.warning("schedule %s: firing failed, will retry: %s", schedule.name, exc,
                            extra={"action": "schedule_fire"})
        return fired

    def _run_plan(self, schedule: Schedule, plan: Plan) -> list[Fired]:
        if plan.skipped:
            log.warning("schedule %s: %d missed fire(s) %s", schedule.name, plan.skipped,
                        "folded into one catch-up run" if schedule.misfire == "run_once" else "skipped",
                        extra={"action": "schedule_misfire"})
        fired: list[Fired] = []
        for fire_at in plan.fires:
            try:
                fired.extend(self._submit(schedule, fire_at))
            except ConveyorError:
                # Keep what was submitted; resume at the fire that failed.
                last = fired[-1].fire_at if fired else None
                self.schedules.record_fire(schedule, fire_at, last)
                raise
        last_fired = plan.fires[-1] if plan.fires else None
        if not self.schedules.record_fire(schedule, plan.next_fire_at, last_fired):
            log.info("schedule %s changed while firing; its next tick re-plans", schedule.name)
        return fired

    def _submit(self, schedule: Schedule, fire_at: float) -> list[Fired]:
        request = SubmitRequest(type=schedule.type, params=schedule.params, queue=schedule.queue,
                                priority=schedule.priority, idempotency_key=schedule.idempotency_key(fire_at))
        try:
            task, created = self.tasks.submit(request)
        except (ValueError, SerializationError) as exc:  # the definition cannot make a task: drop the fire
            log.error("schedule %s: cannot submit %s: %s", schedule.name, schedule.type, exc,
                      extra={"action": "schedule_fire"})
            return []
        log.info("schedule %s fired for %s: task %s%s", schedule.name, iso(fire_at), task.id,
                 "" if created else " (already submitted)",
                 extra={"task_id": str(task.id), "action": "schedule_fire"})
        return [Fired(schedule.name, fire_at, str(task.id), created)]

    # -- code-declared schedules --------------------------------------------------------
    def declare(self, specs: Iterable[Mapping[str, Any]]) -> list[Schedule]:
        """Upsert schedules declared with ``@app.periodic`` (every replica does it on start)."""
        declared = []
        for spec in specs:
            schedule = Schedule.new(
                spec["name"], spec["type"], params=dict(spec.get("params") or {}), cron=spec.get("cron"),
                interval_s=spec.get("interval_s"), timezone=spec.get("timezone") or "UTC",
                **{k: spec[k] for k in ("queue", "priority", "misfire") if spec.get(k) is not None},
            )
            declared.append(self.schedules.upsert(schedule))
        return declared

    # -- leadership ---------------------------------------------------------------------
    def renew(self) -> bool:
        """Take or keep the leader lease; returns whether this replica holds it."""
        started = time.monotonic()
        try:
            held = self.schedules.acquire_lease(LEASE_NAME, self.holder, self.clock(), self.lease_s)
        except ConveyorError as exc:
            log.warning("scheduler lease: cannot reach the store: %s", exc, extra={"action": "lease"})
            held = False
        if held:
            self._valid_until = started + self.lease_s
        if held != self.is_leader:
            log.info("scheduler %s %s", self.holder, "is now the leader" if held else "lost the lead",
                     extra={"action": "lease"})
            self.is_leader = held
            self._next_watch = 0.0
        return held

    def leading(self) -> bool:
        return self.is_leader and time.monotonic() < self._valid_until

    def step(self) -> float:
        """One loop iteration: renew when due, fire and watch when leading; returns the pause."""
        mono = time.monotonic()
        if mono >= self._next_renew:
            self.renew()
            self._next_renew = mono + self.renew_s
        if self.leading():
            self.tick(self.clock())
            if mono >= self._next_watch:
                self._next_watch = mono + self.lease_s
                self._watch()
            if self.maintenance is not None and mono >= self._next_maintain:
                self._next_maintain = mono + self.maintain_s
                self.maintenance()
        return max(0.0, min(self.tick_s, self._next_renew - time.monotonic()))

    def _watch(self) -> None:
        store, publish = self.tasks.store, self.tasks.publisher.publish_now
        try:
            watch_nodes(store, publish, self.settings, self.clock())
            sweep_expired(store, publish, self.settings)
            flow_sweep(store, publish, max_crashes=self.settings.max_crashes,  # docs/flow-control.md
                       heartbeat_s=self.settings.heartbeat_s)
        except ConveyorError as exc:
            log.warning("node watch failed: %s", exc, extra={"action": "node_watch"})

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; then hand the lease over."""
        log.info("scheduler %s started (lease %.1f s, renew %.1f s)", self.holder, self.lease_s,
                 self.renew_s, extra={"action": "start"})
        pause = 0.0
        while not stop.wait(pause):
            try:
                pause = self.step()
            except ConveyorError as exc:
                log.warning("scheduler step failed: %s", exc, extra={"action": "tick"})
                pause = self.tick_s
        self.release()

    def release(self) -> None:
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            self.schedules.release_lease(LEASE_NAME, self.holder)
        except ConveyorError as exc:
            log.warning("scheduler lease: release failed: %s", exc, extra={"action": "lease"})
