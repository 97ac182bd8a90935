"""SqliteStore: the embedded Store, one SQLite file in WAL mode.

Several processes of one machine share the file and each uses threads, so each store holds one
connection guarded by a lock (SQLite serializes writers anyway; an in-process lock queues
threads fairly instead of leaving them to SQLite's sleeping busy handler), takes the write lock
up front (``BEGIN IMMEDIATE``) for read-modify-write, and waits up to ``busy_timeout`` for
other processes. The broker may live in the same file: its tables are prefixed ``broker_``.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import orjson

from conveyor._sqlite import SqliteFile
from conveyor.errors import ConcurrentUpdate, StoreError, TaskNotFound
from conveyor.message import dumps
from conveyor.model import NodeInfo, Page, Task, TaskEvent, TaskFilter, TaskStatus, check_transition
from conveyor.store import sqlite_flow
from conveyor.store.base import CLAIM_EARLY_SLACK_S, Outcome

_CHUNK = 500  # ids per IN (...) list, well under SQLite's bound-variable limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, params TEXT NOT NULL, queue TEXT NOT NULL,
    priority INTEGER NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL, timeout REAL, eta REAL, idempotency_key TEXT UNIQUE,
    result TEXT, error TEXT, node TEXT, created_at REAL NOT NULL, queued_at REAL,
    started_at REAL, finished_at REAL, lease_until REAL, crashes INTEGER NOT NULL,
    version INTEGER NOT NULL, flow TEXT
);
CREATE INDEX IF NOT EXISTS tasks_status_id ON tasks (status, id);
CREATE INDEX IF NOT EXISTS tasks_type_id ON tasks (type, id);
CREATE INDEX IF NOT EXISTS tasks_queue_id ON tasks (queue, id);
CREATE INDEX IF NOT EXISTS tasks_node_id ON tasks (node, id);
CREATE INDEX IF NOT EXISTS tasks_running_lease ON tasks (lease_until) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS tasks_finished_at ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_events (
    seq INTEGER PRIMARY KEY, task_id TEXT NOT NULL, from_status TEXT, to_status TEXT NOT NULL,
    at REAL NOT NULL, node TEXT, detail TEXT
);
CREATE INDEX IF NOT EXISTS task_events_task ON task_events (task_id, seq);
CREATE TABLE IF NOT EXISTS task_outbox (
    task_id TEXT PRIMARY KEY, version INTEGER NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, queues TEXT NOT NULL,
    concurrency INTEGER NOT NULL, started_at REAL NOT NULL, last_heartbeat REAL NOT NULL,
    status TEXT NOT NULL, in_flight INTEGER NOT NULL, done INTEGER NOT NULL
);
"""

# Task fields in column order; the JSON ones are stored as text.
_COLUMNS = tuple(f.name for f in dataclasses.fields(Task))
_JSON_COLUMNS = frozenset({"params", "result", "error", "flow"})
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM tasks"
_INSERT = (
    f"INSERT INTO tasks ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    " ON CONFLICT DO NOTHING"
)
_OUTBOX = (
    "INSERT INTO task_outbox (task_id, version, at) VALUES (?, ?, ?)"
    " ON CONFLICT (task_id) DO UPDATE SET version = excluded.version, at = excluded.at"
)
# update() may change any field but these: identity, the CAS token, and status (via to_status).
_CHANGEABLE = frozenset(_COLUMNS) - {"id", "version", "status"}


def _to_json(value: Any) -> str | None:
    return None if value is None else dumps(value).decode()


def _from_json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _encode(column: str, value: Any) -> Any:
    """A Task field value as its column value."""
    if column in _JSON_COLUMNS:
        return _to_json(value)
    if column == "id":
        return str(value)
    if column == "status":
        return TaskStatus(value).value
    return value


def _row_to_task(row: Sequence[Any]) -> Task:
    data = dict(zip(_COLUMNS, row, strict=True))
    data["id"] = uuid.UUID(data["id"])
    data["status"] = TaskStatus(data["status"])
    for name in _JSON_COLUMNS:
        data[name] = _from_json(data[name])
    if data["params"] is None:
        data["params"] = {}
    return Task(**data)


def _claimable(task: Task, attempt: int, at: float) -> bool:
    if task.attempts >= attempt:
        return False  # a stale copy of an attempt already started
    if task.status is TaskStatus.QUEUED:
        return True
    return task.status in (TaskStatus.SCHEDULED, TaskStatus.RETRYING) and (
        task.eta is None or task.eta <= at + CLAIM_EARLY_SLACK_S)


def _outcome_changes(task: Task, outcome: Outcome, at: float) -> dict[str, Any]:
    """The fields an outcome writes (as ``finish_many`` on PostgreSQL: ``postgres_batch``)."""
    if outcome.status is TaskStatus.QUEUED:  # given back: the interrupted attempt does not count
        return {"attempts": task.attempts - 1, "queued_at": at, "eta": None, "lease_until": None}
    changes: dict[str, Any] = {"result": outcome.result, "error": outcome.error, "lease_until": None}
    if outcome.status is TaskStatus.RETRYING:
        changes.update(eta=at + outcome.retry_in_s, finished_at=None)
    else:
        changes["finished_at"] = at
    return changes


def _row_to_node(row: Sequence[Any]) -> NodeInfo:
    node_id, host, pid, queues, concurrency, started, beat, status, in_flight, done = row
    return NodeInfo(
        id=node_id, host=host, pid=pid, queues=tuple(orjson.loads(queues)), concurrency=concurrency,
        started_at=started, last_heartbeat=beat, status=status, in_flight=in_flight, done=done,
    )


class SqliteStore:
    """The Store port on one SQLite file (see the module docstring for the concurrency model)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._db = SqliteFile(url, StoreError, "store", _SCHEMA)
        sqlite_flow.migrate(self._db)  # flow control's tables (docs/flow-control.md)

    def now(self) -> float:
        """The embedded store lives on one machine: its clock is the machine's."""
        return time.time()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction on the file (the broker's tables live in it too)."""
        return self._db.transaction()

    def locked(self) -> AbstractContextManager[sqlite3.Connection]:
        """The connection, for one statement (autocommit)."""
        return self._db.locked()

    def create(self, task: Task, *, detail: str | None = None, publish: bool = True) -> tuple[Task, bool]:
        return self.create_many([task], detail=detail, publish=publish)[0]

    def create_many(self, tasks: Sequence[Task], *, detail: str | None = None,
                    publish: bool = True) -> list[tuple[Task, bool]]:
        with self._db.transaction() as conn:
            return self.insert(conn, tasks, detail, publish)

    def insert(self, conn: sqlite3.Connection, tasks: Sequence[Task], detail: str | None,
               publish: bool) -> list[tuple[Task, bool]]:
        """``create_many`` inside the caller's transaction (the embedded submit also writes
        the broker's message in it, and then needs no outbox intent)."""
        return [self._insert(conn, task, detail, publish) for task in tasks]

    def _insert(self, conn: sqlite3.Connection, task: Task, detail: str | None,
                publish: bool) -> tuple[Task, bool]:
        values = [_encode(c, getattr(task, c)) for c in _COLUMNS]
        if conn.execute(_INSERT, values).rowcount == 0:
            row = None
            if task.idempotency_key is not None:
                row = conn.execute(f"{_SELECT} WHERE idempotency_key = ?", (task.idempotency_key,)).fetchone()
            unique = (task.flow or {}).get("unique_key")
            if row is None and unique is not None:  # a unique task (docs/flow-control.md)
                row = conn.execute(f"{_SELECT} WHERE {sqlite_flow.ACTIVE_UNIQUE_WHERE}", (unique,)).fetchone()
            if row is None and task.idempotency_key is None:
                row = conn.execute(f"{_SELECT} WHERE id = ?", (str(task.id),)).fetchone()
            if row is None:  # pragma: no cover - only the key or id conflict is ignored
                raise StoreError(f"task {task.id} was not inserted")
            return _row_to_task(row), False
        self._insert_event(conn, task.id, None, task.status, None, detail)
        if publish:
            conn.execute(_OUTBOX, (str(task.id), task.version, time.time()))
        return task, True

    def get(self, task_id: uuid.UUID) -> Task:
        with self._db.locked() as conn:
            row = conn.execute(f"{_SELECT} WHERE id = ?", (str(task_id),)).fetchone()
        if row is None:
            raise TaskNotFound(task_id)
        return _row_to_task(row)

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
        """Compare-and-set on ``version``. ``node``, when given, is written to the task and
        recorded on the event; ``changes`` are other Task fields."""
        with self._db.transaction() as conn:
            return self.update_in(conn, task, to_status, node=node, detail=detail, publish=publish, **changes)

    def update_in(self, conn: sqlite3.Connection, task: Task, to_status: TaskStatus | None, *,
                  node: str | None = None, detail: str | None = None, publish: bool = False,
                  **changes: Any) -> Task:
        """``update`` inside the caller's transaction."""
        unknown = set(changes) - _CHANGEABLE
        if unknown:
            raise TypeError(f"update() cannot change {sorted(unknown)}")
        if to_status is not None:
            check_transition(task.id, task.status, to_status)
        written = self._write(conn, task, to_status, node, detail, changes)
        if publish:
            conn.execute(_OUTBOX, (str(written.id), written.version, time.time()))
        return written

    def _write(self, conn: sqlite3.Connection, task: Task, to_status: TaskStatus | None, node: str | None,
               detail: str | None, changes: dict[str, Any]) -> Task:
        """The compare-and-set and its event, inside the caller's transaction."""
        if node is not None:
            changes = {**changes, "node": node}
        new = task.replace(status=to_status or task.status, version=task.version + 1, **changes)
        columns = ["status", "version", *changes]
        sets = ", ".join(f"{c} = ?" for c in columns)
        cursor = conn.execute(
            f"UPDATE tasks SET {sets} WHERE id = ? AND version = ?",
            (*(_encode(c, getattr(new, c)) for c in columns), str(task.id), task.version),
        )
        if cursor.rowcount == 0:
            exists = conn.execute("SELECT 1 FROM tasks WHERE id = ?", (str(task.id),)).fetchone()
            raise ConcurrentUpdate(task.id) if exists else TaskNotFound(task.id)
        if to_status is not None:
            self._insert_event(conn, task.id, task.status, to_status, node, detail)
        return new

    def claim_many(self, claims: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> list[Task | None]:
        with self._db.transaction() as conn:
            return self.claim_in(conn, claims, node, lease_s)

    def claim_in(self, conn: sqlite3.Connection, claims: Sequence[tuple[uuid.UUID, int]], node: str,
                 lease_s: float) -> list[Task | None]:
        """``claim_many`` inside the caller's transaction."""
        at = time.time()
        started: dict[uuid.UUID, Task] = {}
        results: list[Task | None] = []
        for task_id, attempt in claims:
            if task_id in started:  # one task twice in a batch: the first copy claims it
                results.append(None)
                continue
            row = conn.execute(f"{_SELECT} WHERE id = ?", (str(task_id),)).fetchone()
            task = _row_to_task(row) if row is not None else None
            if task is None or not _claimable(task, attempt, at):
                results.append(None)
                continue
            changes = {"attempts": attempt, "started_at": at, "lease_until": at + lease_s,
                       "finished_at": None, "queued_at": task.queued_at or at}
            started[task_id] = self._write(conn, task, TaskStatus.RUNNING, node, f"attempt {attempt}", changes)
            results.append(started[task_id])
        return results

    def finish_many(self, outcomes: Sequence[Outcome], node: str) -> list[Task | None]:
        with self._db.transaction() as conn:
            return self.finish_in(conn, outcomes, node)

    def finish_in(self, conn: sqlite3.Connection, outcomes: Sequence[Outcome], node: str) -> list[Task | None]:
        """``finish_many`` inside the caller's transaction."""
        at = time.time()
        results: list[Task | None] = []
        for outcome in outcomes:
            row = conn.execute(
                f"{_SELECT} WHERE id = ? AND status = 'running' AND attempts = ? AND node = ?",
                (str(outcome.task_id), outcome.attempt, node)).fetchone()
            if row is None:
                results.append(None)  # fenced off: no longer this node's attempt
                continue
            task = _row_to_task(row)
            written = self._write(conn, task, outcome.status, node, outcome.detail, _outcome_changes(task, outcome, at))
            if outcome.publish:
                conn.execute(_OUTBOX, (str(written.id), written.version, at))
            results.append(written)
        return results

    @staticmethod
    def _insert_event(
        conn: sqlite3.Connection, task_id: uuid.UUID, from_status: TaskStatus | None,
        to_status: TaskStatus, node: str | None, detail: str | None,
    ) -> None:
        from_value = from_status.value if from_status else None
        conn.execute(
            "INSERT INTO task_events (task_id, from_status, to_status, at, node, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (str(task_id), from_value, to_status.value, time.time(), node, detail),
        )

    def renew_leases(self, leases: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> set[uuid.UUID]:
        """Extend leases in place, bumping ``version`` (a take-over's compare-and-set then sees
        that the owner is alive)."""
        until = time.time() + lease_s
        renewed: set[uuid.UUID] = set()
        with self._db.transaction() as conn:
            for task_id, attempt in leases:
                row = conn.execute(
                    "UPDATE tasks SET lease_until = ?, version = version + 1 WHERE id = ? AND attempts = ?"
                    " AND node = ? AND status = 'running' RETURNING id",
                    (until, str(task_id), attempt, node),
                ).fetchone()
                if row is not None:
                    renewed.add(task_id)
        return renewed

    def expired_leases(self, older_than_s: float, limit: int = 100) -> list[Task]:
        with self._db.locked() as conn:
            rows = conn.execute(
                f"{_SELECT} WHERE status = 'running' AND lease_until < ? ORDER BY lease_until LIMIT ?",
                (time.time() - older_than_s, limit),
            ).fetchall()
        return [_row_to_task(r) for r in rows]

    def unpublished(self, older_than_s: float, limit: int = 500) -> list[Task]:
        cols = ", ".join("t." + c for c in _COLUMNS)
        with self._db.transaction() as conn:
            rows = conn.execute(
                f"SELECT {cols} FROM task_outbox o JOIN tasks t ON t.id = o.task_id WHERE o.at < ?"
                " ORDER BY o.at LIMIT ?", (time.time() - older_than_s, limit)).fetchall()
            conn.execute("DELETE FROM task_outbox WHERE at < ? AND task_id NOT IN (SELECT id FROM tasks)",
                         (time.time() - older_than_s,))
        return [_row_to_task(r) for r in rows]

    def mark_published(self, tasks: Sequence[Task]) -> None:
        if not tasks:
            return
        with self._db.transaction() as conn:
            conn.executemany("DELETE FROM task_outbox WHERE task_id = ? AND version <= ?",
                             [(str(t.id), t.version) for t in tasks])

    def events(self, task_id: uuid.UUID) -> list[TaskEvent]:
        with self._db.locked() as conn:
            rows = conn.execute(
                "SELECT from_status, to_status, at, node, detail FROM task_events"
                " WHERE task_id = ? ORDER BY seq",
                (str(task_id),),
            ).fetchall()
        return [
            TaskEvent(task_id=task_id, from_status=TaskStatus(f) if f else None, to_status=TaskStatus(t),
                      at=at, node=node, detail=detail)
            for f, t, at, node, detail in rows
        ]

    def query(self, filter: TaskFilter, *, limit: int = 50, cursor: uuid.UUID | None = None) -> Page:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("status", filter.status), ("type", filter.type),
                              ("queue", filter.queue), ("node", filter.node)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value.value if isinstance(value, TaskStatus) else value)
        if cursor is not None:
            where.append("id < ?")
            args.append(str(cursor))
        sql = _SELECT + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?"
        with self._db.locked() as conn:
            rows = conn.execute(sql, (*args, limit)).fetchall()
        tasks = [_row_to_task(r) for r in rows]
        next_cursor = tasks[-1].id if tasks and len(tasks) == limit else None
        return Page(tasks=tasks, next_cursor=next_cursor)

    def count_by_status(self, queue: str | None = None) -> dict[str, int]:
        """Every status, zero included."""
        sql = "SELECT status, COUNT(*) FROM tasks"
        args: tuple[Any, ...] = ()
        if queue is not None:
            sql, args = sql + " WHERE queue = ?", (queue,)
        with self._db.locked() as conn:
            rows = conn.execute(sql + " GROUP BY status", args).fetchall()
        counts = {s.value: 0 for s in TaskStatus}
        counts.update({status: n for status, n in rows})
        return counts

    def queue_stats(self, since: float) -> dict[str, dict[str, int]]:
        """Per queue: every status (zero included) and ``finished_since``, the tasks that
        reached a final status at or after ``since``."""
        with self._db.locked() as conn:
            by_status = conn.execute(
                "SELECT queue, status, COUNT(*) FROM tasks GROUP BY queue, status"
            ).fetchall()
            finished = conn.execute(
                "SELECT queue, COUNT(*) FROM tasks WHERE finished_at >= ? GROUP BY queue", (since,)
            ).fetchall()
        stats: dict[str, dict[str, int]] = {}
        zero = {**{s.value: 0 for s in TaskStatus}, "finished_since": 0}
        for queue, status, count in by_status:
            stats.setdefault(queue, dict(zero))[status] = count
        for queue, count in finished:
            stats.setdefault(queue, dict(zero))["finished_since"] = count
        return stats

    def upsert_node(self, node: NodeInfo) -> None:
        with self._db.locked() as conn:
            conn.execute(
                "INSERT INTO nodes (id, host, pid, queues, concurrency, started_at, last_heartbeat, status,"
                " in_flight, done) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " host = excluded.host, pid = excluded.pid, queues = excluded.queues,"
                " concurrency = excluded.concurrency, started_at = excluded.started_at,"
                " last_heartbeat = excluded.last_heartbeat, status = excluded.status,"
                " in_flight = excluded.in_flight, done = excluded.done",
                (node.id, node.host, node.pid, _to_json(list(node.queues)), node.concurrency, node.started_at,
                 node.last_heartbeat, node.status, node.in_flight, node.done),
            )

    def nodes(self) -> list[NodeInfo]:
        with self._db.locked() as conn:
            rows = conn.execute(
                "SELECT id, host, pid, queues, concurrency, started_at, last_heartbeat, status,"
                " in_flight, done FROM nodes ORDER BY started_at, id"
            ).fetchall()
        return [_row_to_node(r) for r in rows]

    def close(self) -> None:
        self._db.close()
