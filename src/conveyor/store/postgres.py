"""PostgreSQL store: the distributed deployment's durable task records, timelines and node registry.

One ``psycopg_pool.ConnectionPool`` in autocommit mode serves every thread. Each write is a single
statement (a data-modifying CTE writes the task and its event together), so it is atomic and costs
one round trip; concurrent writers share a pipelined transaction (``_write_batch``). Times are stored as
POSIX seconds in ``double precision`` columns, exactly as ``conveyor.model`` holds them, so rows
map to ``Task`` without conversion. The schema lives in ``sql/migrations`` (see ``migrate.py``)
and is created unqualified: a ``search_path`` given in the URL
(``?options=-csearch_path%3Dname``) chooses the schema.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
from psycopg.rows import RowMaker, TupleRow
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool

from conveyor.batching import Combiner
from conveyor.errors import ConcurrentUpdate, ConveyorError, StoreError, TaskNotFound
from conveyor.message import dumps
from conveyor.model import NodeInfo, Page, Task, TaskEvent, TaskFilter, TaskStatus, check_transition, now
from conveyor.store import postgres_batch as batch
from conveyor.store.migrate import apply_pending

__all__ = ["PostgresStore", "UpdateItem"]

# (statement, parameters) of one task write, as group-committed by ``_write_batch``.
_Write = tuple[str, Any]
# (task as last read, to_status, node, detail, changes): one entry of ``update_many``.
UpdateItem = tuple[Task, TaskStatus | None, str | None, str | None, dict[str, Any]]

_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Task))
_COLS = ", ".join(_FIELDS)  # table columns in Task field order: a row is Task(*row)
_STATUS_AT = _FIELDS.index("status")
_STATUSES = {s.value: s for s in TaskStatus}
_JSON_FIELDS = frozenset({"params", "result", "error"})
# Identity, the CAS token, and status (written through to_status) are never plain changes.
_CHANGEABLE = frozenset(_FIELDS) - {"id", "status", "version"}
_EVENT_COLS = "task_id, from_status, to_status, at, node, detail"
_NODE_COLS = "id, host, pid, queues, concurrency, started_at, last_heartbeat, status, in_flight, done"

_INSERT_SQL = f"""
WITH t AS (
    INSERT INTO tasks ({_COLS}) VALUES ({", ".join(["%s"] * len(_FIELDS))})
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING {_COLS}
), e AS (
    INSERT INTO task_events ({_EVENT_COLS})
    SELECT id, NULL, status, %s::float8, NULL, %s::text FROM t
)
SELECT {_COLS} FROM t
"""


_STARTS_SQL = batch.starts_sql(_FIELDS, _COLS, _EVENT_COLS)
_FINISHES_SQL = batch.finishes_sql(_FIELDS, _COLS, _EVENT_COLS)


def _is_plain_success(task: Task, to_status: TaskStatus | None, node: str | None, detail: str | None,
                      changes: dict[str, Any]) -> bool:
    """A worker recording a result: running -> succeeded, nothing else changed."""
    return (to_status is TaskStatus.SUCCEEDED and task.status is TaskStatus.RUNNING and node is not None
            and detail is None and "finished_at" in changes
            and set(changes) <= {"result", "error", "finished_at", "lease_until"}
            and changes.get("error") is None and changes.get("lease_until") is None)


def _make_task(values: Sequence[Any]) -> Task:
    row = list(values)
    row[_STATUS_AT] = _STATUSES[row[_STATUS_AT]]
    return Task(*row)


def _task_rows(cursor: psycopg.Cursor[Any]) -> RowMaker[Task]:
    return _make_task


def _column_value(name: str, value: Any) -> Any:
    """A Task field's value as its column's: JSON fields wrapped (params are never NULL)."""
    if name not in _JSON_FIELDS:
        return value
    return Jsonb(value) if name == "params" else batch.jsonb_or_null(value)


def _task_values(task: Task) -> list[Any]:
    values = [_column_value(name, getattr(task, name)) for name in _FIELDS]
    values[_STATUS_AT] = task.status.value
    return values


@functools.lru_cache(maxsize=256)
def _update_sql(columns: tuple[str, ...], with_event: bool) -> str:
    """The CAS statement that sets ``columns``; cached so psycopg can prepare it once per shape."""
    sets = "".join(f"{col} = %s, " for col in columns)
    update = f"UPDATE tasks SET {sets}version = version + 1 WHERE id = %s AND version = %s RETURNING {_COLS}"
    if not with_event:
        return update
    return f"""
WITH u AS ({update}), e AS (
    INSERT INTO task_events ({_EVENT_COLS})
    SELECT id, %s::text, %s::text, %s::float8, %s::text, %s::text FROM u
)
SELECT {_COLS} FROM u
"""


def _plan_update(
    task: Task, to_status: TaskStatus | None, node: str | None, detail: str | None, changes: dict[str, Any]
) -> tuple[str, list[Any]]:
    """Validate one update and return its statement and parameters (nothing is sent)."""
    unknown = set(changes) - _CHANGEABLE
    if unknown:
        raise TypeError(f"update() cannot change {sorted(unknown)}")
    columns: list[str] = []
    values: list[Any] = []
    if to_status is not None:
        check_transition(task.id, task.status, to_status)
        columns.append("status")
        values.append(to_status.value)
    if node is not None:
        changes = {**changes, "node": node}
    for name, value in changes.items():
        columns.append(name)
        values.append(_column_value(name, value))
    values += [task.id, task.version]
    if to_status is not None:
        values += [task.status.value, to_status.value, now(), node, detail]
    return _update_sql(tuple(columns), to_status is not None), values


def _configure(conn: psycopg.Connection[Any]) -> None:
    set_json_dumps(dumps, conn)  # raises SerializationError for what is not JSON
    set_json_loads(orjson.loads, conn)
    # psycopg prepares a statement after a few runs; PostgreSQL would still re-plan each run of
    # the CTE writes (~2 ms, more than running them: measured with EXPLAIN ANALYZE). Their
    # generic plans are index lookups by id whatever the parameters.
    conn.execute("SET plan_cache_mode = force_generic_plan")


def _pipelined(conn: psycopg.Connection[Any], writes: Sequence[_Write]) -> list[Task | None]:
    """The writes in one transaction, sent pipelined: one round trip, one commit."""
    with conn.pipeline(), conn.transaction():
        cursors = [conn.cursor(row_factory=_task_rows).execute(query, params) for query, params in writes]
    return [cur.fetchone() for cur in cursors]


@contextmanager
def _driver_errors(action: str) -> Iterator[None]:
    """Callers never see psycopg types: driver failures become ``StoreError``."""
    try:
        yield
    except psycopg.Error as exc:
        raise StoreError(f"postgres store: {action} failed: {exc}") from exc


class PostgresStore:
    """The ``Store`` port on PostgreSQL; safe to share between threads."""

    def __init__(
        self, url: str, *, migrate: bool = True, max_connections: int = 8, connect_timeout_s: float = 10.0
    ) -> None:
        self._pool: ConnectionPool[psycopg.Connection[TupleRow]] = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True},
            configure=_configure,
            timeout=connect_timeout_s,
            name="conveyor-store",
            open=True,
        )
        self._writes: Combiner[_Write, Task | None] = Combiner(self._write_batch)
        self._starts: Combiner[batch.StartItem, Task | None] = Combiner(self._start_batch)
        self._finishes: Combiner[batch.FinishItem, Task | None] = Combiner(self._finish_batch)
        try:
            with _driver_errors("connect"):
                self._pool.wait(timeout=connect_timeout_s)
            if migrate:
                with _driver_errors("migrate"), self._pool.connection() as conn:
                    apply_pending(conn)
        except BaseException:
            self._pool.close()
            raise

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write_batch(self, writes: Sequence[_Write]) -> list[Task | BaseException | None]:
        """Group commit: the writes of concurrent callers in one transaction and one pipelined
        round trip. If the batch fails as a whole (one bad write, a deadlock), each write is
        retried alone so one caller's failure is not everyone's."""
        with self._pool.connection() as conn:
            if len(writes) == 1:
                return [self._write_one(conn, writes[0])]
            try:
                return list(_pipelined(conn, writes))
            except psycopg.Error:
                return [self._write_one(conn, w) for w in writes]

    @staticmethod
    def _write_one(conn: psycopg.Connection[Any], write: _Write) -> Task | BaseException | None:
        try:
            return conn.cursor(row_factory=_task_rows).execute(*write).fetchone()
        except psycopg.Error as exc:
            return StoreError(f"postgres store: write failed: {exc}")
        except ConveyorError as exc:  # e.g. SerializationError from the JSON dumper
            return exc

    def create(self, task: Task, *, detail: str | None = None) -> tuple[Task, bool]:
        params = [*_task_values(task), now(), detail]
        with _driver_errors("create"):
            created = self._writes.call((_INSERT_SQL, params))
        # Only an idempotency key conflict inserts nothing without raising.
        return (created, True) if created is not None else (self._by_key(task), False)

    def create_many(self, tasks: Sequence[Task], *, detail: str | None = None) -> list[tuple[Task, bool]]:
        """One transaction, one pipelined round trip (plus one per idempotency-key conflict)."""
        at = now()
        with _driver_errors("create_many"):
            written = self._write_batch([(_INSERT_SQL, [*_task_values(t), at, detail]) for t in tasks])
        results: list[tuple[Task, bool]] = []
        for task, row in zip(tasks, written, strict=True):
            if isinstance(row, BaseException):
                raise row
            results.append((row, True) if row is not None else (self._by_key(task), False))
        return results

    def _by_key(self, task: Task) -> Task:
        with _driver_errors("create"), self._pool.connection() as conn:
            existing = (
                conn.cursor(row_factory=_task_rows)
                .execute(f"SELECT {_COLS} FROM tasks WHERE idempotency_key = %s", (task.idempotency_key,))
                .fetchone()
            )
        if existing is None:
            raise StoreError(f"task {task.id}: insert skipped but no task holds its idempotency key")
        return existing

    def get(self, task_id: uuid.UUID) -> Task:
        with _driver_errors("get"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=_task_rows)
            found = cur.execute(f"SELECT {_COLS} FROM tasks WHERE id = %s", (task_id,)).fetchone()
        if found is None:
            raise TaskNotFound(task_id)
        return found

    def update(
        self,
        task: Task,
        to_status: TaskStatus | None,
        *,
        node: str | None = None,
        detail: str | None = None,
        **changes: Any,
    ) -> Task:
        """Compare-and-set on ``task.version``. ``node`` (when given) becomes the task's node and
        is recorded on the event; ``None`` leaves the task's node as it is."""
        with _driver_errors("update"):
            if _is_plain_success(task, to_status, node, detail, changes):
                # The hottest write of all: a set-based statement shared by concurrent workers.
                finished = (task.id, task.version, changes.get("result"), changes["finished_at"], node or "")
                written = self._finishes.call(finished)
            else:
                query, params = _plan_update(task, to_status, node, detail, changes)
                written = self._writes.call((query, params))
        if written is not None:
            return written
        with _driver_errors("update"), self._pool.connection() as conn:
            exists = conn.execute("SELECT 1 FROM tasks WHERE id = %s", (task.id,)).fetchone()
        if exists is None:
            raise TaskNotFound(task.id)
        raise ConcurrentUpdate(task.id)

    def start_attempt(self, task_id: uuid.UUID, node: str, *, at: float, lease_until: float) -> Task | None:
        with _driver_errors("start_attempt"):
            return self._starts.call((task_id, at, lease_until, node))

    def _start_batch(self, items: Sequence[batch.StartItem]) -> list[Task | BaseException | None]:
        return self._set_based(_STARTS_SQL, batch.starts_params, items)

    def _finish_batch(self, items: Sequence[batch.FinishItem]) -> list[Task | BaseException | None]:
        return self._set_based(_FINISHES_SQL, batch.finishes_params, items)

    def _set_based(self, sql: str, params: Callable[[Sequence[Any]], dict[str, Any]],
                   items: Sequence[Any]) -> list[Task | BaseException | None]:
        """Run one set-based statement for ``items`` (tuples whose first element is the task id);
        each item gets its written task, or None where its compare-and-set did not match. If the
        statement fails as a whole, each item is tried alone so one bad item fails only itself."""
        keep = batch.first_of_each_id([i[0] for i in items])
        try:
            with self._pool.connection() as conn:
                rows = conn.cursor(row_factory=_task_rows).execute(sql, params([items[k] for k in keep])).fetchall()
        except (psycopg.Error, ConveyorError) as exc:
            if len(keep) == 1:
                return [exc if isinstance(exc, ConveyorError) else StoreError(f"postgres store: {exc}")] * len(items)
            return [r for item in items for r in self._set_based(sql, params, [item])]
        written = {t.id: t for t in rows}
        results: list[Task | BaseException | None] = [None] * len(items)
        for k in keep:
            results[k] = written.get(items[k][0])
        return results

    def update_many(self, items: Sequence[UpdateItem]) -> list[Task | None]:
        """Apply a batch of ``update`` calls in one transaction and (pipelined) one round trip.

        Not part of the ``Store`` protocol yet. Each item is ``(task, to_status, node, detail,
        changes)`` with ``update``'s meaning. Every item is validated before anything is sent
        (``InvalidTransition``/``ValueError`` abort the whole batch). A lost compare-and-set, or an
        unknown task id, writes nothing for that item and yields ``None`` in its place; the
        others are still applied. Returns the written tasks in the order of ``items``."""
        plans = [_plan_update(task, to, node, detail, changes) for task, to, node, detail, changes in items]
        if not plans:
            return []
        with _driver_errors("update_many"), self._pool.connection() as conn:
            return _pipelined(conn, plans)

    def renew_leases(self, task_ids: Sequence[uuid.UUID], node: str, lease_until: float) -> set[uuid.UUID]:
        """Not a status change: ``version`` is left alone so the owner's next CAS still holds."""
        if not task_ids:
            return set()
        with _driver_errors("renew_leases"), self._pool.connection() as conn:
            rows = conn.execute(
                "UPDATE tasks SET lease_until = %s WHERE id = ANY(%s) AND node = %s AND status = 'running'"
                " RETURNING id",
                (lease_until, list(task_ids), node),
            ).fetchall()
        return {row[0] for row in rows}

    def expired_leases(self, now: float, limit: int = 100) -> list[Task]:
        with _driver_errors("expired_leases"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=_task_rows)
            return cur.execute(
                f"SELECT {_COLS} FROM tasks WHERE status = 'running' AND lease_until < %s"
                " ORDER BY lease_until LIMIT %s",
                (now, limit),
            ).fetchall()

    def events(self, task_id: uuid.UUID) -> list[TaskEvent]:
        with _driver_errors("events"), self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {_EVENT_COLS} FROM task_events WHERE task_id = %s ORDER BY seq", (task_id,)
            ).fetchall()
        return [
            TaskEvent(tid, _STATUSES[src] if src is not None else None, _STATUSES[dst], at, node, detail)
            for tid, src, dst, at, node, detail in rows
        ]

    def query(self, filter: TaskFilter, *, limit: int = 50, cursor: uuid.UUID | None = None) -> Page:
        sql, params = self.query_sql(filter, limit=limit, cursor=cursor)
        with _driver_errors("query"), self._pool.connection() as conn:
            tasks = conn.cursor(row_factory=_task_rows).execute(sql, params).fetchall()
        full = limit > 0 and len(tasks) == limit
        return Page(tasks, tasks[-1].id if full else None)

    @staticmethod
    def query_sql(filter: TaskFilter, *, limit: int, cursor: uuid.UUID | None) -> tuple[str, list[Any]]:
        """The statement ``query`` runs (public so tests can EXPLAIN it)."""
        where: list[str] = []
        params: list[Any] = []
        for column in ("status", "type", "queue", "node"):
            value = getattr(filter, column)
            if value is not None:
                where.append(f"{column} = %s")
                params.append(value.value if isinstance(value, TaskStatus) else value)
        if cursor is not None:
            where.append("id < %s")
            params.append(cursor)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        params.append(max(limit, 0))
        return f"SELECT {_COLS} FROM tasks {clause}ORDER BY id DESC LIMIT %s", params

    def count_by_status(self, queue: str | None = None) -> dict[str, int]:
        """Every status, zero included."""
        sql = "SELECT status, count(*) FROM tasks"
        params: tuple[Any, ...] = ()
        if queue is not None:
            sql += " WHERE queue = %s"
            params = (queue,)
        with _driver_errors("count_by_status"), self._pool.connection() as conn:
            rows = conn.execute(sql + " GROUP BY status", params).fetchall()
        counts = {s.value: 0 for s in TaskStatus}
        counts.update(rows)
        return counts

    def queue_stats(self, since: float) -> dict[str, dict[str, int]]:
        stats: dict[str, dict[str, int]] = {}
        with _driver_errors("queue_stats"), self._pool.connection() as conn:
            for queue, status, count in conn.execute(
                "SELECT queue, status, count(*) FROM tasks GROUP BY queue, status"
            ).fetchall():
                stats.setdefault(queue, {s.value: 0 for s in TaskStatus})[status] = count
            for queue, count in conn.execute(
                "SELECT queue, count(*) FROM tasks WHERE finished_at >= %s GROUP BY queue", (since,)
            ).fetchall():
                stats.setdefault(queue, {s.value: 0 for s in TaskStatus})["finished_since"] = count
        for counts in stats.values():
            counts.setdefault("finished_since", 0)
        return stats

    def upsert_node(self, node: NodeInfo) -> None:
        updates = ", ".join(f"{col} = EXCLUDED.{col}" for col in _NODE_COLS.split(", ")[1:])
        with _driver_errors("upsert_node"), self._pool.connection() as conn:
            conn.execute(
                f"INSERT INTO nodes ({_NODE_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                f" ON CONFLICT (id) DO UPDATE SET {updates}",
                (
                    node.id, node.host, node.pid, list(node.queues), node.concurrency,
                    node.started_at, node.last_heartbeat, node.status, node.in_flight, node.done,
                ),
            )  # fmt: skip

    def nodes(self) -> list[NodeInfo]:
        with _driver_errors("nodes"), self._pool.connection() as conn:
            rows = conn.execute(f"SELECT {_NODE_COLS} FROM nodes ORDER BY started_at, id").fetchall()
        return [
            NodeInfo(nid, host, pid, tuple(queues), conc, started, beat, status, in_flight, done)
            for nid, host, pid, queues, conc, started, beat, status, in_flight, done in rows
        ]

    def close(self) -> None:
        self._pool.close()
