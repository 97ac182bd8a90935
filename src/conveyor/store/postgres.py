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

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import orjson
import psycopg
from psycopg.rows import RowMaker, TupleRow
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool

from conveyor.batching import Combiner
from conveyor.errors import ConcurrentUpdate, ConveyorError, StoreError, StoreRefused, TaskNotFound
from conveyor.message import dumps
from conveyor.model import NodeInfo, Page, Task, TaskEvent, TaskFilter, TaskStatus
from conveyor.store import postgres_batch as batch
from conveyor.store.base import Outcome
from conveyor.store.migrate import apply_pending
from conveyor.store.postgres_sql import (
    _COLS,
    _EVENT_COLS,
    _FIELDS,
    _INSERT_SQL,
    _JSON_AT,
    _NODE_COLS,
    _STATUSES,
    _UPSERT_NODE_SQL,
    _make_task,
    _node_values,
    plan_update,
    task_values,
)

__all__ = ["PostgresStore", "UpdateItem"]

log = logging.getLogger(__name__)

# (statement, parameters) of one task write, as group-committed by ``_write_batch``.
_Write = tuple[str, Any]
# (task as last read, to_status, node, detail, changes): one entry of ``update_many``.
UpdateItem = tuple[Task, TaskStatus | None, str | None, str | None, dict[str, Any]]

_CLAIMS_SQL = batch.claims_sql(_FIELDS, _COLS, _EVENT_COLS)
_OUTCOMES_SQL = batch.outcomes_sql(_FIELDS, _COLS, _EVENT_COLS)
_CLOCK_SQL = f"SELECT {batch.CLOCK}"
_CLOCK_REFRESH_S = 60.0


def _task_rows(cursor: psycopg.Cursor[Any]) -> RowMaker[Any]:
    """Rows of whole tasks as ``Task``; a statement returning fewer columns (an insert returns
    only the id) gets plain tuples."""
    if cursor.description is not None and len(cursor.description) == len(_FIELDS):
        return _make_task
    return tuple


def _jsonb(value: Any) -> Jsonb | None:
    """A JSON column value for psycopg: Python None is SQL NULL."""
    return None if value is None else Jsonb(value)


def _task_values(task: Task) -> list[Any]:
    return _wrap_json(task_values(task), _JSON_AT)


def _wrap_json(values: list[Any], positions: Sequence[int]) -> list[Any]:
    for at in positions:
        values[at] = _jsonb(values[at])
    return values


def _plan_update(task: Task, to_status: TaskStatus | None, node: str | None, detail: str | None,
                 changes: dict[str, Any], publish: bool = False) -> tuple[str, list[Any]]:
    query, values, json_at = plan_update(task, to_status, node, detail, changes, publish)
    return query, _wrap_json(values, json_at)


def _batch_json(params: dict[str, Any]) -> dict[str, Any]:
    """The JSON arrays of a batch statement's parameters, wrapped for psycopg."""
    for key in ("f_results", "f_errors"):
        if key in params:
            params[key] = [_jsonb(v) for v in params[key]]
    return params


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
        refused = (exc.sqlstate or "").startswith("22")
        raise (StoreRefused if refused else StoreError)(f"postgres store: {action} failed: {describe(exc)}") from exc


F = TypeVar("F", bound=Callable[..., Any])


def _once_more_if_the_connection_died(method: F) -> F:
    """A pooled connection the server closed while it sat idle (a restart, a terminated
    backend) fails its next operation; the pool drops it, and the operation is tried once more
    on another. (Checking every connection before handing it out would cost a round trip per
    operation.) Every method so wrapped is safe to repeat: reads, inserts that skip a conflict,
    compare-and-set writes."""
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except StoreError as exc:
            if not isinstance(exc.__cause__, psycopg.OperationalError):
                raise
            log.info("postgres store: %s; trying once more on a fresh connection", exc)
            return method(self, *args, **kwargs)

    return cast(F, wrapper)


def describe(exc: psycopg.Error) -> str:
    """The server's message without its DETAIL/CONTEXT lines, which can quote row values (task
    params) that have no place in a log; the SQLSTATE says which kind of error it was."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or (str(exc).splitlines() or [type(exc).__name__])[0]
    code = getattr(exc, "sqlstate", None)
    return f"{text} [{code}]" if code else text


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
        self.url = url
        self._writes: Combiner[_Write, Task | None] = Combiner(self._write_batch)
        self._clock_offset = 0.0
        self._clock_read_at = -_CLOCK_REFRESH_S
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
            error = StoreError(f"postgres store: write failed: {describe(exc)}")
            error.__cause__ = exc  # a dead connection's writes are tried again (see the decorator)
            return error
        except ConveyorError as exc:  # e.g. SerializationError from the JSON dumper
            return exc

    def now(self) -> float:
        """The server's clock: this process's clock plus an offset measured every minute (the
        midpoint of a round trip), so reading it costs nothing between measurements."""
        local = time.time()
        if time.monotonic() - self._clock_read_at >= _CLOCK_REFRESH_S:
            try:
                with self._pool.connection() as conn:
                    before = time.time()
                    row = conn.execute(_CLOCK_SQL).fetchone()
                    after = time.time()
                assert row is not None
                self._clock_offset = float(row[0]) - (before + after) / 2
                self._clock_read_at = time.monotonic()
                local = after
            except psycopg.Error:
                pass  # keep the last offset: a clock read must not fail a caller
        return local + self._clock_offset

    @_once_more_if_the_connection_died
    def create(self, task: Task, *, detail: str | None = None, publish: bool = True) -> tuple[Task, bool]:
        params = [*_task_values(task), detail, publish]
        with _driver_errors("create"):
            inserted = self._writes.call((_INSERT_SQL, params))
        # Only a conflict (idempotency key, or an id already adopted) inserts nothing without raising.
        return (task, True) if inserted is not None else self._created(task, detail, publish)

    @_once_more_if_the_connection_died
    def create_many(self, tasks: Sequence[Task], *, detail: str | None = None,
                    publish: bool = True) -> list[tuple[Task, bool]]:
        """One transaction, one pipelined round trip (plus one per idempotency-key conflict)."""
        with _driver_errors("create_many"):
            written = self._write_batch([(_INSERT_SQL, [*_task_values(t), detail, publish]) for t in tasks])
        results: list[tuple[Task, bool]] = []
        for task, row in zip(tasks, written, strict=True):
            if isinstance(row, BaseException):
                raise row
            results.append((task, True) if row is not None else self._created(task, detail, publish))
        return results

    def _existing(self, task: Task) -> Task:
        if task.idempotency_key is None:
            return self.get(task.id)
        return self._by_key(task)

    def _created(self, task: Task, detail: str | None = None, publish: bool = True) -> tuple[Task, bool]:
        """Nothing was inserted: another task holds the key, or this very task (same id) is
        there already (an insert whose answer was lost, tried again)."""
        if task.flow is not None:  # maybe a unique key (docs/flow-control.md)
            from conveyor.store.postgres_flow import existing_task

            with _driver_errors("create"), self._pool.connection() as conn:
                found = existing_task(conn, task)
            if found is None:  # the task holding its unique key finished in between: the key is free
                return self.create(task, detail=detail, publish=publish)
            return found, found == task.replace(version=found.version)
        existing = self._existing(task)
        return existing, existing == task.replace(version=existing.version)

    @_once_more_if_the_connection_died
    def _by_key(self, task: Task) -> Task:
        with _driver_errors("create"), self._pool.connection() as conn:
            existing = (
                conn.cursor(row_factory=_task_rows)
                .execute(f"SELECT {_COLS} FROM tasks WHERE idempotency_key = %s", (task.idempotency_key,))
                .fetchone()
            )
        if existing is None:
            raise StoreError(f"task {task.id}: insert skipped but no task holds its idempotency key")
        return cast(Task, existing)

    @_once_more_if_the_connection_died
    def get(self, task_id: uuid.UUID) -> Task:
        with _driver_errors("get"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=_task_rows)
            found = cur.execute(f"SELECT {_COLS} FROM tasks WHERE id = %s", (task_id,)).fetchone()
        if found is None:
            raise TaskNotFound(task_id)
        return cast(Task, found)

    @_once_more_if_the_connection_died
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
        """Compare-and-set on ``task.version``. ``node`` (when given) becomes the task's node and
        is recorded on the event; ``None`` leaves the task's node as it is."""
        with _driver_errors("update"):
            query, params = _plan_update(task, to_status, node, detail, changes, publish)
            written = self._writes.call((query, params))
        if written is not None:
            return written
        with _driver_errors("update"), self._pool.connection() as conn:
            exists = conn.execute("SELECT 1 FROM tasks WHERE id = %s", (task.id,)).fetchone()
        if exists is None:
            raise TaskNotFound(task.id)
        raise ConcurrentUpdate(task.id)

    @_once_more_if_the_connection_died
    def claim_many(self, claims: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> list[Task | None]:
        ids = [c[0] for c in claims]
        keep = batch.first_of_each_id(ids)
        with _driver_errors("claim"), self._by_key_lookups() as conn:
            rows = conn.cursor(row_factory=_task_rows).execute(
                _CLAIMS_SQL, batch.claims_params([claims[k] for k in keep], node, lease_s)).fetchall()
        return batch.in_order(ids, keep, rows)

    @_once_more_if_the_connection_died
    def finish_many(self, outcomes: Sequence[Outcome], node: str) -> list[Task | None]:
        ids = [o.task_id for o in outcomes]
        keep = batch.first_of_each_id(ids)
        with _driver_errors("finish"), self._by_key_lookups() as conn:
            rows = conn.cursor(row_factory=_task_rows).execute(
                _OUTCOMES_SQL, _batch_json(batch.outcomes_params([outcomes[k] for k in keep], node))).fetchall()
        return batch.in_order(ids, keep, rows)

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

    @_once_more_if_the_connection_died
    def renew_leases(self, leases: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> set[uuid.UUID]:
        if not leases:
            return set()
        with _driver_errors("renew_leases"), self._by_key_lookups() as conn:
            rows = conn.execute(batch.RENEW_SQL, batch.renew_params(leases, node, lease_s)).fetchall()
        return {row[0] for row in rows}

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in autocommit (flow control's reads: ``flow.tx.flow_reading``)."""
        with _driver_errors("read"), self._pool.connection() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection inside one transaction, for flow control's multi-statement writes
        (``store/postgres_flow.py``); plans look tasks up by primary key as in ``claim_many``."""
        with _driver_errors("transaction"), self._by_key_lookups() as conn:
            yield conn

    @contextmanager
    def _by_key_lookups(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction whose plans look tasks up by primary key (see ``batch.BY_KEY``)."""
        with self._pool.connection() as conn, conn.transaction():
            for setting in batch.BY_KEY:
                conn.execute(f"SET LOCAL {setting} = off")
            yield conn

    @_once_more_if_the_connection_died
    def expired_leases(self, older_than_s: float, limit: int = 100) -> list[Task]:
        with _driver_errors("expired_leases"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=_task_rows)
            return cur.execute(
                f"SELECT {_COLS} FROM tasks WHERE status = 'running' AND lease_until < {batch.CLOCK} - %s"
                " ORDER BY lease_until LIMIT %s",
                (older_than_s, limit),
            ).fetchall()

    @_once_more_if_the_connection_died
    def unpublished(self, older_than_s: float, limit: int = 500) -> list[Task]:
        cols = ", ".join("t." + c for c in _FIELDS)
        with _driver_errors("unpublished"), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=_task_rows)
            tasks = cur.execute(
                f"SELECT {cols} FROM task_outbox o JOIN tasks t ON t.id = o.task_id"
                f" WHERE o.at < {batch.CLOCK} - %s ORDER BY o.at LIMIT %s",
                (older_than_s, limit),
            ).fetchall()
            # Intents of tasks deleted since (retention) have nothing left to publish.
            conn.execute(
                f"DELETE FROM task_outbox o WHERE o.at < {batch.CLOCK} - %s"
                " AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = o.task_id)", (older_than_s,))
        return tasks

    @_once_more_if_the_connection_died
    def mark_published(self, tasks: Sequence[Task]) -> None:
        if not tasks:
            return
        with _driver_errors("mark_published"), self._pool.connection() as conn:
            conn.execute(
                "DELETE FROM task_outbox o USING unnest(%s::uuid[], %s::int[]) AS d(id, version)"
                " WHERE o.task_id = d.id AND o.version <= d.version",
                ([t.id for t in tasks], [t.version for t in tasks]),
            )

    @_once_more_if_the_connection_died
    def events(self, task_id: uuid.UUID) -> list[TaskEvent]:
        with _driver_errors("events"), self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {_EVENT_COLS} FROM task_events WHERE task_id = %s ORDER BY seq", (task_id,)
            ).fetchall()
        return [
            TaskEvent(tid, _STATUSES[src] if src is not None else None, _STATUSES[dst], at, node, detail)
            for tid, src, dst, at, node, detail in rows
        ]

    @_once_more_if_the_connection_died
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

    @_once_more_if_the_connection_died
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

    @_once_more_if_the_connection_died
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

    @_once_more_if_the_connection_died
    def upsert_node(self, node: NodeInfo) -> None:
        with _driver_errors("upsert_node"), self._pool.connection() as conn:
            conn.execute(_UPSERT_NODE_SQL, _node_values(node))

    @_once_more_if_the_connection_died
    def nodes(self) -> list[NodeInfo]:
        with _driver_errors("nodes"), self._pool.connection() as conn:
            rows = conn.execute(f"SELECT {_NODE_COLS} FROM nodes ORDER BY started_at, id").fetchall()
        return [
            NodeInfo(nid, host, pid, tuple(queues), conc, started, beat, status, in_flight, done)
            for nid, host, pid, queues, conc, started, beat, status, in_flight, done in rows
        ]

    def close(self) -> None:
        self._pool.close()
