"""Claiming: turn "the broker delivered a message" into "this node owns the task".

Brokers deliver at least once, so the same task can arrive twice (a redelivery after a
crash, a retry copy, a restart of RabbitMQ). The store decides, by compare-and-set, which
delivery runs it. The common case is one statement for a whole batch (``Store.claim_many``);
what it leaves undecided comes here, one task at a time. Every decision is one of:

- Run:   this node now owns the task (status running as attempt n, lease in the store).
- Drop:  nothing to do (finished, cancelled, a stale copy of an older attempt, or failed here
         as crashed); ack the delivery.
- Later: someone else may still own it (live lease) or it is not due yet; hand the delivery
         back with a delay and look again then.

A delivery for attempt m is stale once the task has started attempt m (``attempts >= m``):
the copy of a redelivered or duplicated message must never run after a newer attempt exists.
Leases are judged on the store's clock (``Store.now``), never on this worker's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from conveyor.errors import ConcurrentUpdate, TaskNotFound
from conveyor.message import Message
from conveyor.model import Task, TaskStatus
from conveyor.recovery import take_over
from conveyor.store.base import CLAIM_EARLY_SLACK_S, Store

log = logging.getLogger(__name__)

_CAS_TRIES = 10


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


@dataclass(frozen=True, slots=True)
class Republish:
    """A limited task taken over from a dead node: it needs a new message (claimed through its
    limits when it arrives); drop this delivery."""

    task: Task


Decision = Run | Drop | Later | Republish


def claim(store: Store, msg: Message, node: str, *, lease_s: float, max_crashes: int) -> Decision:
    """Decide what to do with one delivered message: the fast path, then ``decide``."""
    started = store.claim_many([(msg.id, msg.attempt)], node, lease_s)[0]
    if started is not None:
        return Run(started)
    return decide(store, msg, node, lease_s=lease_s, max_crashes=max_crashes)


def decide(store: Store, msg: Message, node: str, *, lease_s: float, max_crashes: int,
           gated: bool = False) -> Decision:
    """The slow path, for a message ``claim_many`` did not start: adopt an unknown task, drop
    a finished or stale one, wait for a live lease or an eta, take over an expired lease. The
    caller must not ask for a task it is running already (a duplicate delivery). A ``gated``
    task (flow control's limits) is never started here: only its limits' claim starts it."""
    task = _load_or_adopt(store, msg)
    for _ in range(_CAS_TRIES):
        try:
            return _decide(store, task, msg.attempt, node, lease_s=lease_s, max_crashes=max_crashes, gated=gated)
        except ConcurrentUpdate:
            task = store.get(msg.id)
    return Later(0.5, "contended")


def _load_or_adopt(store: Store, msg: Message) -> Task:
    try:
        return store.get(msg.id)
    except TaskNotFound:
        # Published straight to the broker by a client that does not use our store, or its
        # store write was lost: the message carries the whole task. No outbox intent: the
        # message exists.
        task, _ = store.create(msg.to_task(store.now()), detail="adopted from a broker message", publish=False)
        return task


def _decide(store: Store, task: Task, attempt: int, node: str, *, lease_s: float, max_crashes: int,
            gated: bool = False) -> Decision:
    at = store.now()
    if task.status.is_final:
        return Drop(f"task already {task.status.value}")
    run_as = attempt
    if task.status is TaskStatus.RUNNING:
        if task.node == node and task.attempts == attempt:
            # This node's own claim, whose answer was lost (the connection died as it committed);
            # the caller asks only for deliveries it does not run already.
            return Run(task)
        if task.lease_until is not None and task.lease_until > at:
            return Later(task.lease_until - at + 0.5, f"running on {task.node} (lease live)")
        task = take_over(store, task, max_crashes=max_crashes)
        if task.status.is_final:
            return Drop("failed as crashed")
        if gated:
            return Republish(task)
        run_as = max(attempt, task.attempts + 1)  # whichever copy rescued it runs the next attempt
    elif attempt <= task.attempts:
        return Drop(f"superseded: task is at attempt {task.attempts}, this delivery is for attempt {attempt}")
    if task.status in (TaskStatus.SCHEDULED, TaskStatus.RETRYING) and task.eta and task.eta > at + CLAIM_EARLY_SLACK_S:
        return Later(task.eta - at, "not due yet")
    if gated:
        return Later(0.2, "limited: started only through its limits")
    started = store.update(
        task, TaskStatus.RUNNING, node=node, detail=f"attempt {run_as}",
        attempts=run_as, started_at=at, lease_until=at + lease_s, finished_at=None,
        queued_at=task.queued_at or at,
    )
    return Run(started)
