"""Flow control's tables and transactions on the embedded SQLite store (``flow.tx.FlowTx``).

The schema mirrors PostgreSQL's migration ``0006_flow.sql`` (ids as text, JSON as text). A
transaction here is the store's ``BEGIN IMMEDIATE`` one: it holds the file's write lock, so
nothing needs locking row by row. Task writes go through the store's own helpers, so a task
written here is written exactly as anywhere else.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.flow.options import ACTIVE_STATUSES
from conveyor.model import NodeInfo, Task, TaskStatus
from conveyor.store.base import Outcome

if TYPE_CHECKING:
    from conveyor._sqlite import SqliteFile
    from conveyor.store.sqlite import SqliteStore

_ACTIVE = ", ".join(repr(s) for s in ACTIVE_STATUSES)
UNIQUE_EXPR = "json_extract(flow, '$.unique_key')"
NODE_EXPR = "json_extract(flow, '$.node')"
_PINNED = "queued', 'scheduled', 'retrying"
ACTIVE_UNIQUE_WHERE = f"{UNIQUE_EXPR} = ? AND status IN ({_ACTIVE})"

SCHEMA = f"""
CREATE UNIQUE INDEX IF NOT EXISTS tasks_unique_active ON tasks ({UNIQUE_EXPR})
    WHERE {UNIQUE_EXPR} IS NOT NULL AND status IN ({_ACTIVE});
CREATE INDEX IF NOT EXISTS tasks_pinned_waiting ON tasks ({NODE_EXPR})
    WHERE {NODE_EXPR} IS NOT NULL AND status IN ('{_PINNED}');
CREATE TABLE IF NOT EXISTS flow_limits (
    name TEXT NOT NULL, kind TEXT NOT NULL, rate_per_s REAL, burst INTEGER, max_running INTEGER,
    key_param TEXT, source TEXT NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (name, kind)
);
CREATE TABLE IF NOT EXISTS flow_buckets (
    kind TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL, tat REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, name, key)
);
CREATE TABLE IF NOT EXISTS flow_slots (
    name TEXT NOT NULL, key TEXT NOT NULL, task_id TEXT NOT NULL, reserved_until REAL,
    PRIMARY KEY (name, key, task_id)
);
CREATE INDEX IF NOT EXISTS flow_slots_task ON flow_slots (task_id);
CREATE TABLE IF NOT EXISTS flow_parked (
    name TEXT NOT NULL, key TEXT NOT NULL, task_id TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (name, key, task_id)
);
CREATE INDEX IF NOT EXISTS flow_parked_order ON flow_parked (name, key, at);
CREATE TABLE IF NOT EXISTS flow_reserved (
    task_id TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (task_id, name, key)
);
CREATE TABLE IF NOT EXISTS flow_workflows (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, result TEXT NOT NULL,
    created_at REAL NOT NULL, cancelled_at REAL
);
CREATE TABLE IF NOT EXISTS flow_steps (
    workflow_id TEXT NOT NULL, name TEXT NOT NULL, task_id TEXT NOT NULL, state TEXT NOT NULL,
    pending INTEGER NOT NULL, spec TEXT NOT NULL, detail TEXT, PRIMARY KEY (workflow_id, name)
);
CREATE INDEX IF NOT EXISTS flow_steps_waiting ON flow_steps (workflow_id) WHERE state = 'waiting';
CREATE TABLE IF NOT EXISTS flow_edges (
    workflow_id TEXT NOT NULL, parent TEXT NOT NULL, child TEXT NOT NULL,
    PRIMARY KEY (workflow_id, parent, child)
)
"""


def migrate(db: SqliteFile) -> None:
    """Create flow control's tables and indexes, and add ``tasks.flow`` to a file made by an older
    Conveyor. A look first, without the write lock: processes opening a file that has them (all
    but the first) take no write lock for it."""
    with db.locked() as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
        last = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'flow_edges'").fetchone()
    if "flow" in columns and last is not None:
        return
    with db.transaction() as conn:
        if "flow" not in {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}:
            conn.execute("ALTER TABLE tasks ADD COLUMN flow TEXT")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)


def _param(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


class SqliteFlowTx:
    def __init__(self, store: SqliteStore, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn
        self.now = time.time()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, [_param(p) for p in params]).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, [_param(p) for p in params]).rowcount

    def tasks(self, ids: Sequence[uuid.UUID], *, lock: bool = False) -> dict[uuid.UUID, Task]:
        from conveyor.store.sqlite import _SELECT, _row_to_task

        found: dict[uuid.UUID, Task] = {}
        for task_id in sorted(set(ids)):
            row = self._conn.execute(f"{_SELECT} WHERE id = ?", (str(task_id),)).fetchone()
            if row is not None:
                found[task_id] = _row_to_task(row)
        return found

    def claim(self, claims: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> list[Task | None]:
        return self._store.claim_in(self._conn, claims, node, lease_s)

    def finish(self, outcomes: Sequence[Outcome], node: str) -> list[Task | None]:
        return self._store.finish_in(self._conn, outcomes, node)

    def update(self, task: Task, to_status: TaskStatus | None, *, node: str | None = None,
               detail: str | None = None, publish: bool = False, **changes: Any) -> Task:
        return self._store.update_in(self._conn, task, to_status, node=node, detail=detail, publish=publish,
                                     **changes)

    def insert(self, tasks: Sequence[Task], *, detail: str | None, publish: bool) -> list[tuple[Task, bool]]:
        return self._store.insert(self._conn, tasks, detail, publish)

    def pinned_nodes(self) -> list[str]:
        return [r[0] for r in self._conn.execute(
            f"SELECT DISTINCT {NODE_EXPR} FROM tasks WHERE {NODE_EXPR} IS NOT NULL AND status IN ('{_PINNED}')")]

    def pinned_waiting(self, node: str, limit: int) -> list[Task]:
        from conveyor.store.sqlite import _SELECT, _row_to_task

        rows = self._conn.execute(f"{_SELECT} WHERE {NODE_EXPR} = ? AND status IN ('{_PINNED}') LIMIT ?",
                                  (node, limit)).fetchall()
        return [_row_to_task(r) for r in rows]

    def nodes(self) -> list[NodeInfo]:
        from conveyor.store.sqlite import _row_to_node

        rows = self._conn.execute("SELECT id, host, pid, queues, concurrency, started_at, last_heartbeat, status,"
                                  " in_flight, done FROM nodes ORDER BY started_at, id").fetchall()
        return [_row_to_node(r) for r in rows]

    def lock_buckets(self, buckets: Sequence[tuple[str, str, str]]) -> None:
        for kind, name, key in buckets:  # the transaction holds the file's write lock already
            self._conn.execute("INSERT INTO flow_buckets (kind, name, key) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                               (kind, name, key))
