"""Node watch (run by the scheduler leader only): mark silent nodes lost, recover their tasks.

A node whose last heartbeat is older than ``3 * heartbeat_s`` is marked ``lost``. Its running
tasks stay owned by it until their store lease expires; from then on they are recovered at
once (``recover_expired`` with no extra margin) instead of after the margin the periodic sweep
keeps for nodes that are merely slow. A lost node that heartbeats again is ``live`` again: the
worker's heartbeat writes its status. Marking reads then writes the node row, so a heartbeat
landing in between is overwritten by the stale row; the node's next heartbeat repairs it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from conveyor.config import Settings
from conveyor.model import TaskFilter, TaskStatus
from conveyor.recovery import Publish, recover_expired, republish_unpublished
from conveyor.store.base import Store

log = logging.getLogger(__name__)

RECENTLY_LOST_S = 3600.0  # older lost nodes are left to the periodic sweep


@dataclass(frozen=True, slots=True)
class WatchResult:
    lost: list[str]  # nodes marked lost by this pass
    recovered: int  # tasks put back to their queue (or failed as crashed)


def mark_lost_nodes(store: Store, settings: Settings, at: float) -> list[str]:
    """Mark live nodes silent for ``3 * heartbeat_s`` as lost; returns their ids."""
    lost: list[str] = []
    for node in store.nodes():
        if node.is_silent(at, settings.heartbeat_s):
            store.upsert_node(dataclasses.replace(node, status="lost"))
            log.warning("node %s lost: no heartbeat for %.1f s", node.id, at - node.last_heartbeat,
                        extra={"worker": node.id, "action": "node_lost"})
            lost.append(node.id)
    return lost


def lost_node_tasks_expired(store: Store, at: float) -> bool:
    """Whether any node marked lost still owns a running task whose lease has run out."""
    for node in store.nodes():
        if node.status != "lost" or at - node.last_heartbeat > RECENTLY_LOST_S:
            continue
        page = store.query(TaskFilter(status=TaskStatus.RUNNING, node=node.id), limit=100)
        if any(t.lease_until is not None and t.lease_until < at for t in page.tasks):
            return True
    return False


def watch_nodes(store: Store, publish: Publish, settings: Settings, at: float) -> WatchResult:
    """One pass of the node watch at time ``at``."""
    lost = mark_lost_nodes(store, settings, at)
    recovered = 0
    if lost_node_tasks_expired(store, at):
        recovered = recover_expired(store, publish, lease_s=0.0, max_crashes=settings.max_crashes)
    return WatchResult(lost, recovered)


def sweep_expired(store: Store, publish: Publish, settings: Settings) -> int:
    """The periodic sweep: tasks whose lease expired more than one lease ago, whoever owned them;
    and messages a crash left unpublished (outbox intents older than ``outbox_grace_s``)."""
    recovered = recover_expired(store, publish, lease_s=settings.lease_s, max_crashes=settings.max_crashes)
    return recovered + republish_unpublished(store, publish, grace_s=settings.outbox_grace_s)
