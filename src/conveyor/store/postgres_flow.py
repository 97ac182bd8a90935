"""Flow control's transactions on PostgreSQL (``flow.tx.FlowTx``): plain statements on one
connection inside one transaction, reusing the store's own task statements (the batch claim and
outcome statements of ``postgres_batch``, the compare-and-set update, the insert), so a task
written here is written exactly as anywhere else. Rows of the flow tables are locked with
``SELECT ... FOR UPDATE`` where two claims or releases could otherwise both act on one count.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

import psycopg

from conveyor.errors import ConcurrentUpdate, TaskNotFound
from conveyor.flow.options import ACTIVE_STATUSES
from conveyor.model import NodeInfo, Task, TaskStatus
from conveyor.store import postgres as pg
from conveyor.store import postgres_batch as batch
from conveyor.store import postgres_sql as sql
from conveyor.store.base import Outcome

# The active task holding a unique key (the partial index ``tasks_unique_active`` serves it).
ACTIVE_UNIQUE_SQL = (f"SELECT {sql._COLS} FROM tasks WHERE (flow->>'unique_key') = %s"
                     f" AND status IN ({', '.join(repr(s) for s in ACTIVE_STATUSES)})")


# Tasks pinned to a node and not started (the partial index ``tasks_pinned_waiting`` serves it).
_PINNED = "(flow->>'node') IS NOT NULL AND status IN ('queued', 'scheduled', 'retrying')"


def _placeholders(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresFlowTx:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        row = conn.execute(f"SELECT {batch.CLOCK}").fetchone()
        assert row is not None
        self.now: float = float(row[0])

    def _tasks(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[Task]:
        return self._conn.cursor(row_factory=pg._task_rows).execute(sql, params).fetchall()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._conn.execute(_placeholders(sql), params)
        return cursor.fetchall() if cursor.description is not None else []

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(_placeholders(sql), params).rowcount

    def tasks(self, ids: Sequence[uuid.UUID], *, lock: bool = False) -> dict[uuid.UUID, Task]:
        if not ids:
            return {}
        suffix = " ORDER BY id FOR UPDATE" if lock else ""
        found = self._tasks(f"SELECT {sql._COLS} FROM tasks WHERE id = ANY(%s){suffix}", (sorted(set(ids)),))
        return {t.id: t for t in found}

    def claim(self, claims: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> list[Task | None]:
        ids = [c[0] for c in claims]
        keep = batch.first_of_each_id(ids)
        if not keep:
            return []
        rows = self._tasks(pg._CLAIMS_SQL, batch.claims_params([claims[k] for k in keep], node, lease_s))
        return batch.in_order(ids, keep, rows)

    def finish(self, outcomes: Sequence[Outcome], node: str) -> list[Task | None]:
        ids = [o.task_id for o in outcomes]
        keep = batch.first_of_each_id(ids)
        if not keep:
            return []
        rows = self._tasks(pg._OUTCOMES_SQL, pg._batch_json(batch.outcomes_params([outcomes[k] for k in keep], node)))
        return batch.in_order(ids, keep, rows)

    def update(self, task: Task, to_status: TaskStatus | None, *, node: str | None = None,
               detail: str | None = None, publish: bool = False, **changes: Any) -> Task:
        query, params = pg._plan_update(task, to_status, node, detail, changes, publish)
        written = self._tasks(query, params)
        if written:
            return written[0]
        if not self._conn.execute("SELECT 1 FROM tasks WHERE id = %s", (task.id,)).fetchone():
            raise TaskNotFound(task.id)
        raise ConcurrentUpdate(task.id)

    def insert(self, tasks: Sequence[Task], *, detail: str | None, publish: bool) -> list[tuple[Task, bool]]:
        results: list[tuple[Task, bool]] = []
        for task in tasks:
            inserted = self._conn.execute(sql._INSERT_SQL, [*pg._task_values(task), detail, publish]).fetchone()
            if inserted is not None:  # only the id comes back: the task is the one inserted
                results.append((task, True))
                continue
            existing = self.conflicting(task)
            if existing is None:
                raise ConcurrentUpdate(task.id)  # a unique key freed in between: the caller retries
            results.append((existing, False))
        return results

    def conflicting(self, task: Task) -> Task | None:
        """The task whose idempotency key, active unique key or id made inserting ``task`` do
        nothing; None when none holds it any more (a unique task finished in between)."""
        return existing_task(self._conn, task)

    def pinned_nodes(self) -> list[str]:
        rows = self._conn.execute(f"SELECT DISTINCT (flow->>'node') FROM tasks WHERE {_PINNED}").fetchall()
        return [r[0] for r in rows]

    def pinned_waiting(self, node: str, limit: int) -> list[Task]:
        return self._tasks(f"SELECT {sql._COLS} FROM tasks WHERE (flow->>'node') = %s AND {_PINNED} LIMIT %s",
                           (node, limit))

    def nodes(self) -> list[NodeInfo]:
        rows = self._conn.execute(f"SELECT {sql._NODE_COLS} FROM nodes ORDER BY started_at, id").fetchall()
        return [NodeInfo(r[0], r[1], r[2], tuple(r[3]), *r[4:]) for r in rows]

    def lock_buckets(self, buckets: Sequence[tuple[str, str, str]]) -> None:
        for kind, name, key in buckets:
            self._conn.execute("INSERT INTO flow_buckets (kind, name, key) VALUES (%s, %s, %s)"
                               " ON CONFLICT DO NOTHING", (kind, name, key))
            self._conn.execute("SELECT 1 FROM flow_buckets WHERE kind = %s AND name = %s AND key = %s FOR UPDATE",
                               (kind, name, key))


def existing_task(conn: psycopg.Connection[Any], task: Task) -> Task | None:
    """See ``PostgresFlowTx.conflicting`` (also used by ``PostgresStore.create``)."""
    cursor = conn.cursor(row_factory=pg._task_rows)
    if task.idempotency_key is not None:
        found = cursor.execute(f"SELECT {sql._COLS} FROM tasks WHERE idempotency_key = %s",
                               (task.idempotency_key,)).fetchone()
        if found is not None:
            return cast(Task, found)
    unique = (task.flow or {}).get("unique_key")
    if isinstance(unique, str):
        found = cursor.execute(ACTIVE_UNIQUE_SQL, (unique,)).fetchone()
        if found is not None:
            return cast(Task, found)
    return cast(Task | None, cursor.execute(f"SELECT {sql._COLS} FROM tasks WHERE id = %s", (task.id,)).fetchone())
