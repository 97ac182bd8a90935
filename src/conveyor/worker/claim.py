"""Claiming: turn "the broker delivered a message" into "this node owns the task".

Brokers deliver at least once, so the same task can arrive twice (a redelivery after a
crash, a retry copy, a restart of RabbitMQ). The store decides, by compare-and-set on the
task's version, which delivery runs it. Every outcome here is one of:

- Run:   this node now owns the task (status running, lease in the store).
- Drop:  nothing to do (finished, cancelled, or failed here as crashed); ack the delivery.
- Later: someone else may still own it (live lease) or it is not due yet; hand the delivery
         back with a delay and look again then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from conveyor.errors import ConcurrentUpdate, TaskNotFound
from conveyor.message import Message
from conveyor.model import Task, TaskStatus, now
from conveyor.recovery import take_over
from conveyor.store.base import Store

log = logging.getLogger(__name__)

EARLY_SLACK_S = 0.05  # a delayed delivery may arrive a little early; run it anyway


@dataclass(frozen=True, slots=True)
class Run:
    task: Task


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


@dataclass(frozen=True, slots=True)
class Later:
    delay_s: float
    reason: str


Outcome = Run | Drop | Later


def claim(store: Store, msg: Message, node: str, *, lease_s: float, max_crashes: int) -> Outcome:
    """Decide what to do with a delivered message; retries lost compare-and-sets."""
    at = now()
    started = store.start_attempt(msg.id, node, at=at, lease_until=at + lease_s)
    if started is not None:  # the common case, in one round trip
        return Run(started)
    task = _load_or_adopt(store, msg)
    for _ in range(10):
        try:
            return _decide(store, task, node, lease_s=lease_s, max_crashes=max_crashes)
        except ConcurrentUpdate:
            task = store.get(msg.id)
    return Later(0.5, "contended")


def _load_or_adopt(store: Store, msg: Message) -> Task:
    try:
        return store.get(msg.id)
    except TaskNotFound:
        # Published straight to the broker by a client that does not use our store.
        task, _ = store.create(msg.to_task(), detail="adopted from a broker message")
        return task


def _decide(store: Store, task: Task, node: str, *, lease_s: float, max_crashes: int) -> Outcome:
    at = now()
    if task.status.is_final:
        return Drop(f"task already {task.status.value}")
    if task.status is TaskStatus.RUNNING:
        if task.lease_until is not None and task.lease_until > at:
            return Later(task.lease_until - at + 0.5, f"running on {task.node} (lease live)")
        task = take_over(store, task, max_crashes=max_crashes)
        if task.status.is_final:
            return Drop("failed as crashed")
    if task.status in (TaskStatus.SCHEDULED, TaskStatus.RETRYING) and task.eta and task.eta > at + EARLY_SLACK_S:
        return Later(task.eta - at, "not due yet")
    started = store.update(
        task, TaskStatus.RUNNING, node=node, detail=f"attempt {task.attempts + 1}",
        attempts=task.attempts + 1, started_at=at, lease_until=at + lease_s, finished_at=None,
        queued_at=task.queued_at or at,
    )
    return Run(started)
