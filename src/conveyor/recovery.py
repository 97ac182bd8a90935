"""Recovering what a crash left behind: tasks of dead nodes, and messages never published.

**Dead nodes.** Normally a dead node's task comes back by itself: the embedded broker's lease
expires, or RabbitMQ redelivers when the connection drops, and the claim takes it over. A task
that ran past ``ack_handoff_s`` on RabbitMQ had its delivery acked early (see
docs/architecture.md), so only the store knows it: here, any task whose store lease expired
more than one full lease ago (on the store's clock) is taken over and published again.

**The outbox.** Every store write that leaves a task needing a message records an intent in
the same transaction, removed once the broker confirmed the message. An intent older than a
grace period belongs to a publisher that died (or a broker that was down): it is published here.

Workers and the scheduler both run these; compare-and-set in ``take_over`` and the claim's
dedupe make concurrent or repeated runs harmless (at worst a duplicate message, dropped by the
claim).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from conveyor.errors import ConcurrentUpdate, ConveyorError, StoreError
from conveyor.model import Task, TaskStatus
from conveyor.store.base import Store

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Task]], None]  # confirmed publish of the tasks' messages
_NEEDS_MESSAGE = frozenset({TaskStatus.QUEUED, TaskStatus.SCHEDULED, TaskStatus.RETRYING})


def recover_expired(store: Store, publish: Publish, *, lease_s: float, max_crashes: int,
                    limit: int = 100) -> int:
    """Re-publish tasks whose lease expired over ``lease_s`` ago; returns how many."""
    recovered: list[Task] = []
    for task in store.expired_leases(lease_s, limit=limit):
        try:
            updated = take_over(store, task, max_crashes=max_crashes)
        except (ConcurrentUpdate, StoreError):
            continue  # someone else got there first, or the owner renewed just now
        if updated.status is TaskStatus.QUEUED:
            recovered.append(updated)
    if recovered:
        _publish(store, publish, recovered)
        log.warning("recovered %d task(s) from dead nodes", len(recovered), extra={"action": "recover"})
    return len(recovered)


def take_over(store: Store, task: Task, *, max_crashes: int) -> Task:
    """The running task's owner stopped renewing its lease: count a crash, and either put the
    task back to queued (with an outbox intent: it needs a new message) or, after
    ``max_crashes``, fail it as ``crashed`` for inspection. Compare-and-set: a renewal since
    ``task`` was read (the owner is alive after all) makes it raise ``ConcurrentUpdate``."""
    crashes = task.crashes + 1
    reason = f"lease of node {task.node} expired (crash {crashes} of {max_crashes})"
    if crashes >= max_crashes:
        log.error("task %s failed: its node died %d times", task.id, crashes,
                  extra={"task_id": str(task.id), "action": "crashed"})
        error = {"type": "crashed", "message": f"its worker died while running it {crashes} times",
                 "traceback": None}
        return store.update(task, TaskStatus.FAILED, detail=reason, crashes=crashes, error=error,
                            finished_at=store.now(), lease_until=None)
    log.warning("task %s: %s", task.id, reason, extra={"task_id": str(task.id), "action": "takeover"})
    return store.update(task, TaskStatus.QUEUED, detail=reason, crashes=crashes, lease_until=None,
                        queued_at=store.now(), publish=True)


def republish_unpublished(store: Store, publish: Publish, *, grace_s: float, limit: int = 500) -> int:
    """Publish the messages of outbox intents older than ``grace_s``; returns how many."""
    tasks = store.unpublished(grace_s, limit=limit)
    if not tasks:
        return 0
    waiting = [t for t in tasks if t.status in _NEEDS_MESSAGE]
    _publish(store, publish, waiting)
    store.mark_published([t for t in tasks if t.status not in _NEEDS_MESSAGE])
    if waiting:
        log.warning("published %d task message(s) left unpublished by a crash or an outage", len(waiting),
                    extra={"action": "outbox"})
    return len(waiting)


def _publish(store: Store, publish: Publish, tasks: Sequence[Task]) -> None:
    if not tasks:
        return
    try:
        publish(tasks)
    except ConveyorError as exc:  # the intents stay: the next sweep tries again
        log.warning("could not publish %d recovered task(s): %s", len(tasks), exc)
        return
    store.mark_published(tasks)
