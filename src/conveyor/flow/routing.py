"""Routing strategies: which node runs a task.

- ``fair`` (the default): any worker of the queue takes it, with bounded prefetch.
- ``key``: the task goes to the node that a consistent (rendezvous) hash of its key picks among
  the live nodes of its queue, so tasks with one key run on one node while it lives. When that
  node dies, the sweep moves its waiting tasks to the node the hash picks among those left; keys
  of the other nodes do not move.
- ``broadcast``: one child task per live node of the queue, each pinned to its node (a workflow
  whose steps are named ``node:<id>``). The child of a node that dies before running it is
  cancelled: the others' nodes have their own copy.
- ``sharded``: N child tasks (``shard_index``/``shard_total`` in ``current_task()``), spread over
  the live nodes round robin; a dead node's waiting shards move like keyed tasks.

A pinned task names its node in ``flow["node"]``; its message goes to that node's own queue
(``_node.<id>``), which every worker consumes beside its queues. Nodes count as live when their
heartbeat is recent (``3 * heartbeat_s``), judged on the store's clock.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

from conveyor.flow.tx import FlowTx
from conveyor.model import NodeInfo, Task, TaskStatus
from conveyor.store.base import Store

log = logging.getLogger(__name__)

NODE_QUEUE_PREFIX = "_node."
DEFAULT_HEARTBEAT_S = 5.0
_WAITING = (TaskStatus.QUEUED, TaskStatus.SCHEDULED, TaskStatus.RETRYING)


def node_queue(node_id: str) -> str:
    return NODE_QUEUE_PREFIX + node_id


def publish_queue(task: Task) -> str:
    """The queue a task's message goes to: its node's own queue when it is pinned."""
    flow = task.flow
    if flow:
        node = flow.get("node")
        if isinstance(node, str):
            return node_queue(node)
    return task.queue


def live_nodes(nodes: Sequence[NodeInfo], queue: str, at: float, heartbeat_s: float) -> list[NodeInfo]:
    """Nodes that serve ``queue``, consume their own queue, and heartbeat; in id order."""
    return sorted((n for n in nodes if n.status == "live" and not n.is_silent(at, heartbeat_s)
                   and queue in n.queues and node_queue(n.id) in n.queues), key=lambda n: n.id)


def pick(key: str, nodes: Sequence[NodeInfo]) -> NodeInfo:
    """Rendezvous hashing: the node with the highest hash of (key, node). Removing a node moves
    only its own keys; adding one takes a fair share from each."""
    return max(nodes, key=lambda n: hashlib.blake2b(f"{key}\0{n.id}".encode(), digest_size=8).digest())


def pin_keyed(store: Store, tasks: Sequence[Task], heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> list[Task]:
    """Give each ``route="key"`` task its node (tasks without a live node stay unpinned: any
    worker of the queue runs them)."""
    keyed = [t for t in tasks if t.flow and t.flow.get("route") == "key"]
    if not keyed:
        return list(tasks)
    nodes, at = store.nodes(), store.now()
    pinned: list[Task] = []
    for task in tasks:
        flow = task.flow
        if flow and flow.get("route") == "key":
            live = live_nodes(nodes, task.queue, at, heartbeat_s)
            if live:
                task = task.replace(flow={**flow, "node": pick(str(flow.get("route_key", "")), live).id})
        pinned.append(task)
    return pinned


def spread(nodes: Sequence[NodeInfo], count: int) -> list[NodeInfo]:
    """``count`` shards over ``nodes``, round robin in node id order."""
    return [nodes[i % len(nodes)] for i in range(count)]


def repin(tx: FlowTx, pinned: Sequence[Task], nodes: Sequence[NodeInfo], heartbeat_s: float) -> list[Task]:
    """Tasks waiting for a node that is no longer live: move keyed tasks and shards to a live
    node (their next message goes there), cancel broadcast copies. Returns the moved tasks."""
    moved: list[Task] = []
    for task in pinned:
        flow: dict[str, Any] = dict(task.flow or {})
        live = live_nodes(nodes, task.queue, tx.now, heartbeat_s)
        if flow.get("route") == "broadcast" or not live:
            if flow.get("route") == "broadcast":
                tx.update(task, TaskStatus.CANCELLED, finished_at=tx.now,
                          detail=f"broadcast: node {flow.get('node')} is gone")
            continue
        if flow.get("route") == "sharded":
            shard = flow.get("shard") or [0, 1]
            target = spread(live, int(shard[1]))[int(shard[0])]
        else:
            target = pick(str(flow.get("route_key", "")), live)
        old = flow.get("node")
        flow["node"] = target.id
        moved.append(tx.update(task, None, flow=flow, publish=True))
        log.info("task %s: node %s is gone; moved to %s", task.id, old, target.id,
                 extra={"task_id": str(task.id), "action": "repin"})
    return moved


def dead_pins(nodes: Sequence[NodeInfo], at: float, heartbeat_s: float) -> list[str]:
    """Ids of registered nodes that are not live (pins to them need moving)."""
    return sorted(n.id for n in nodes if n.status != "live" or n.is_silent(at, heartbeat_s))


__all__ = ["NODE_QUEUE_PREFIX", "dead_pins", "live_nodes", "node_queue", "pick", "pin_keyed", "publish_queue",
           "repin", "spread"]
