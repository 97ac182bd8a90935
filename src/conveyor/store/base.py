"""The Store port: durable task records, their timelines, the node registry and the outbox.

Implementations: ``SqliteStore`` (embedded default) and ``PostgresStore`` (distributed).
Every write that changes a task records a ``TaskEvent`` in the same transaction, so a task's
timeline can never disagree with it.

Three rules the hot path relies on (docs/architecture.md, "Claims, leases and fencing"):

- **One clock.** Leases and etas are set and judged on the store's clock (``now()``), never on
  a worker's: a worker whose clock is off cannot take over a healthy task.
- **Fencing.** The owner of a running attempt writes only where the task is still ``running``
  with ``attempts = n`` on its node (``finish_many``, ``renew_leases``): an owner that lost its
  lease cannot overwrite a newer attempt or a cancel.
- **Outbox.** A write that leaves a task needing a message (``publish=True``) records an intent
  in the same transaction; whoever publishes it removes the intent (``mark_published``) and the
  reconciler republishes intents left behind by a crash (``unpublished``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from conveyor.model import JSON, NodeInfo, Page, Task, TaskEvent, TaskFilter, TaskStatus

CLAIM_EARLY_SLACK_S = 0.05  # a delayed delivery may arrive a little early: run it anyway


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, as its owner writes it (``Store.finish_many``)."""

    task_id: uuid.UUID
    attempt: int  # the fencing token: the attempt the writer owns
    status: TaskStatus  # SUCCEEDED | FAILED | RETRYING | QUEUED (given back unfinished)
    result: JSON = None
    error: dict[str, Any] | None = None
    retry_in_s: float = 0.0  # RETRYING: eta = the store's now + this
    detail: str | None = None
    publish: bool = False  # the task needs a new message: record an outbox intent


class Store(Protocol):
    def now(self) -> float:
        """The store's clock, in POSIX seconds."""
        ...

    def create(self, task: Task, *, detail: str | None = None, publish: bool = True) -> tuple[Task, bool]:
        """Insert ``task`` (and its creation event; with ``publish``, its outbox intent). When
        another task already holds its ``idempotency_key`` (or its id), insert nothing and
        return ``(that task, False)``."""
        ...

    def create_many(self, tasks: Sequence[Task], *, detail: str | None = None,
                    publish: bool = True) -> list[tuple[Task, bool]]:
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
        publish: bool = False,
        **changes: Any,
    ) -> Task:
        """Compare-and-set: write ``changes`` (and ``to_status``) only if the stored task still
        has ``task.version``; raise ``ConcurrentUpdate`` otherwise and ``InvalidTransition`` if
        the lifecycle forbids the move. ``to_status=None`` changes fields only (no event).
        ``publish`` records an outbox intent with the write. Returns the task as written
        (version + 1)."""
        ...

    def claim_many(self, claims: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> list[Task | None]:
        """The worker's fast path, one statement for a batch of (task id, attempt m): where the
        task is ``queued``, or ``scheduled`` / ``retrying`` with its eta reached on the store's
        clock, and ``attempts < m``, move it to ``running`` on ``node`` as attempt m (lease
        ``now + lease_s``, event "attempt m") and return it; None elsewhere (the caller then
        reads the task and decides: ``worker.claim``)."""
        ...

    def finish_many(self, outcomes: Sequence[Outcome], node: str) -> list[Task | None]:
        """Record the end of each attempt, fenced: only where the task is still ``running`` as
        attempt ``outcome.attempt`` on ``node``; None where the fence held it off. One
        transaction, durable when this returns."""
        ...

    def renew_leases(self, leases: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> set[uuid.UUID]:
        """Extend to ``now + lease_s`` the lease of each (task id, attempt) that ``node`` still
        owns; returns the ids renewed: a missing one is no longer this node's (cancelled,
        finished, taken over)."""
        ...

    def expired_leases(self, older_than_s: float, limit: int = 100) -> list[Task]:
        """Running tasks whose lease ended more than ``older_than_s`` ago (store clock)."""
        ...

    def unpublished(self, older_than_s: float, limit: int = 500) -> list[Task]:
        """Tasks with an outbox intent older than ``older_than_s`` (store clock), oldest first."""
        ...

    def mark_published(self, tasks: Sequence[Task]) -> None:
        """Remove the outbox intents the messages of ``tasks`` (at their versions) fulfil."""
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
        """Register a node or refresh its heartbeat and counters (callers stamp
        ``last_heartbeat`` with the store's clock, ``now()``)."""
        ...

    def nodes(self) -> list[NodeInfo]:
        ...

    def close(self) -> None:
        ...
