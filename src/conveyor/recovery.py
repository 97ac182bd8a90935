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

from conveyor import message
from conveyor.broker.base import Broker
from conveyor.errors import ConcurrentUpdate, StoreError
from conveyor.message import Message
from conveyor.model import TaskStatus, now
from conveyor.store.base import Store
from conveyor.worker.claim import take_over

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
            broker.declare_queue(updated.queue)
            broker.publish(message.encode(Message.for_task(updated)), queue=updated.queue,
                           priority=updated.priority)
        recovered += 1
    if recovered:
        log.warning("recovered %d task(s) from dead nodes", recovered, extra={"action": "recover"})
    return recovered
