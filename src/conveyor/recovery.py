"""Recovering tasks whose node died after its delivery was already acked.

Normally a dead node's task comes back by itself: the embedded broker's lease expires, or
RabbitMQ redelivers when the connection drops, and ``claim`` takes it over. A task that ran
past ``ack_handoff_s`` on RabbitMQ had its delivery acked early (see docs/architecture.md),
so only the store knows it: here, any task whose store lease expired more than one full lease
ago is taken over and published again. Workers and the scheduler both run this; the
compare-and-set in ``take_over`` makes concurrent reapers harmless.
"""

from __future__ import annotations

import logging

from conveyor.broker.base import Broker
from conveyor.errors import ConcurrentUpdate, StoreError
from conveyor.model import Task, TaskStatus, now
from conveyor.service import publish_tasks
from conveyor.store.base import Store

log = logging.getLogger(__name__)


def recover_expired(store: Store, broker: Broker, *, lease_s: float, max_crashes: int,
                    limit: int = 100) -> int:
    """Re-publish tasks whose lease expired over ``lease_s`` ago; returns how many."""
    recovered = 0
    for task in store.expired_leases(now() - lease_s, limit=limit):
        try:
            updated = take_over(store, task, max_crashes=max_crashes)
        except (ConcurrentUpdate, StoreError):
            continue  # someone else got there first
        if updated.status is TaskStatus.QUEUED:
            publish_tasks(broker, [updated])
        recovered += 1
    if recovered:
        log.warning("recovered %d task(s) from dead nodes", recovered, extra={"action": "recover"})
    return recovered


def take_over(store: Store, task: Task, *, max_crashes: int) -> Task:
    """The running task's owner stopped renewing its lease: count a crash, and either put the
    task back to queued or, after ``max_crashes``, fail it as ``crashed`` for inspection."""
    crashes = task.crashes + 1
    reason = f"lease of node {task.node} expired (crash {crashes} of {max_crashes})"
    if crashes >= max_crashes:
        log.error("task %s failed: its node died %d times", task.id, crashes,
                  extra={"task_id": str(task.id), "action": "crashed"})
        error = {"type": "crashed", "message": f"its worker died while running it {crashes} times",
                 "traceback": None}
        return store.update(task, TaskStatus.FAILED, detail=reason, crashes=crashes, error=error,
                            finished_at=now(), lease_until=None)
    log.warning("task %s: %s", task.id, reason, extra={"task_id": str(task.id), "action": "takeover"})
    return store.update(task, TaskStatus.QUEUED, detail=reason, crashes=crashes, lease_until=None)
