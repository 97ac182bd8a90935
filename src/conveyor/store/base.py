"""The Store port: durable task records, their timelines, and the node registry.

Implementations: ``SqliteStore`` (embedded default) and ``PostgresStore`` (distributed).
Every write that changes a task is a compare-and-set on ``Task.version`` and records a
``TaskEvent`` in the same transaction, so a task's timeline can never disagree with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from conveyor.model import NodeInfo, Page, Task, TaskEvent, TaskFilter, TaskStatus


class Store(Protocol):
    def create(self, task: Task, *, detail: str | None = None) -> tuple[Task, bool]:
        """Insert ``task`` (and its creation event). When another task already holds its
        ``idempotency_key``, insert nothing and return ``(that task, False)``."""
        ...

    def create_many(self, tasks: Sequence[Task], *, detail: str | None = None) -> list[tuple[Task, bool]]:
        """``create`` for a batch, in one transaction; results in the order of ``tasks``."""
        ...

    def get(self, task_id: uuid.UUID) -> Task:
        """The task, or raise ``TaskNotFound``."""
        ...

    def update(
        self,
        task: Task,
        to_status: TaskStatus | None,
        *,
        node: str | None = None,
        detail: str | None = None,
        **changes: Any,
    ) -> Task:
        """Compare-and-set: write ``changes`` (and ``to_status``) only if the stored task still
        has ``task.version``; raise ``ConcurrentUpdate`` otherwise and ``InvalidTransition`` if
        the lifecycle forbids the move. ``to_status=None`` changes fields only (no event).
        Returns the task as written (version + 1)."""
        ...

    def start_attempt(self, task_id: uuid.UUID, node: str, *, at: float, lease_until: float) -> Task | None:
        """The worker's fast path, one round trip: if the task is ``queued``, or ``scheduled`` /
        ``retrying`` with its eta reached by ``at``, move it to ``running`` on ``node`` (attempts
        + 1, ``started_at=at``, the lease, event "attempt N") and return it. Otherwise change
        nothing and return None; the caller then reads the task and decides."""
        ...

    def renew_leases(self, task_ids: Sequence[uuid.UUID], node: str, lease_until: float) -> set[uuid.UUID]:
        """Extend the lease of the running tasks ``node`` owns; others are left alone. Returns
        the ids renewed: a missing one is no longer this node's (cancelled, finished, taken over)."""
        ...

    def expired_leases(self, now: float, limit: int = 100) -> list[Task]:
        """Running tasks whose owner stopped renewing their lease before ``now``."""
        ...

    def events(self, task_id: uuid.UUID) -> list[TaskEvent]:
        """The task's timeline, oldest first."""
        ...

    def query(self, filter: TaskFilter, *, limit: int = 50, cursor: uuid.UUID | None = None) -> Page:
        """Tasks matching ``filter``, newest first, ``limit`` at most, after ``cursor`` (keyset)."""
        ...

    def count_by_status(self, queue: str | None = None) -> dict[str, int]:
        ...

    def queue_stats(self, since: float) -> dict[str, dict[str, int]]:
        """Per queue: the count of tasks in each status, plus ``finished_since``: tasks that
        reached a final status at or after ``since`` (for rates)."""
        ...

    def upsert_node(self, node: NodeInfo) -> None:
        """Register a node or refresh its heartbeat and counters."""
        ...

    def nodes(self) -> list[NodeInfo]:
        ...

    def close(self) -> None:
        ...
