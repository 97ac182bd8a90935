"""Flow control's transactions in a worker process (``flow.tx.FlowTx`` over asyncpg): the worker
speaks PostgreSQL only through ``AsyncPostgres`` on its event loop, so flow control's logic,
which runs on a store thread, holds one pooled connection in a transaction and sends each
statement to the loop and waits, as ``LoopStore`` does. The statements are the store's own
(``postgres_sql``, ``postgres_batch``), so a task is written exactly as anywhere else.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import asyncpg

from conveyor.errors import ConcurrentUpdate, StoreError, TaskNotFound
from conveyor.flow.options import ACTIVE_STATUSES
from conveyor.model import NodeInfo, Task, TaskStatus
from conveyor.store import postgres_batch as batch
from conveyor.store import postgres_sql as pg
from conveyor.store.base import Outcome
from conveyor.store.postgres_async import LoopStore, positional

_CLAIMS_SQL = batch.claims_sql(pg._FIELDS, pg._COLS, pg._EVENT_COLS)
_OUTCOMES_SQL = batch.outcomes_sql(pg._FIELDS, pg._COLS, pg._EVENT_COLS)
_PINNED = "(flow->>'node') IS NOT NULL AND status IN ('queued', 'scheduled', 'retrying')"
_ACTIVE_UNIQUE = (f"SELECT {pg._COLS} FROM tasks WHERE (flow->>'unique_key') = $1"
                  f" AND status IN ({', '.join(repr(s) for s in ACTIVE_STATUSES)})")
_QMARK = re.compile(r"\?")
_TIMEOUT_S = 60.0


def _numbered(sql: str) -> str:
    """``?`` placeholders as asyncpg's ``$1``, ``$2``, ..."""
    count = iter(range(1, 10_000))
    return _QMARK.sub(lambda _: f"${next(count)}", sql)


def _args(sql: str, params: dict[str, Any] | Sequence[Any]) -> tuple[str, list[Any]]:
    text, names = positional(sql)
    return text, [params[n] for n in names] if isinstance(params, dict) else list(params)


class AsyncFlowTx:
    def __init__(self, conn: asyncpg.Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        self._loop = loop
        self.now: float = float(self._fetch(f"SELECT {batch.CLOCK}", [])[0][0])

    def _wait(self, coro: Any) -> Any:
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_TIMEOUT_S)
        except asyncpg.PostgresError as exc:
            raise StoreError(f"postgres store: {str(exc).splitlines()[0]} [{getattr(exc, 'sqlstate', '')}]") from exc
        except (OSError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgres store: connection lost: {exc!r}") from exc
        except TimeoutError as exc:
            raise StoreError(f"postgres store: no answer within {_TIMEOUT_S:g} s") from exc

    def _fetch(self, sql: str, args: Sequence[Any]) -> list[Any]:
        rows: list[Any] = self._wait(self._conn.fetch(sql, *args))
        return rows

    def _tasks(self, sql: str, params: dict[str, Any] | Sequence[Any]) -> list[Task]:
        return [pg._make_task(r) for r in self._fetch(*_args(sql, params))]

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._fetch(_numbered(sql), params)]

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        status: str = self._wait(self._conn.execute(_numbered(sql), *params))
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    def tasks(self, ids: Sequence[uuid.UUID], *, lock: bool = False) -> dict[uuid.UUID, Task]:
        if not ids:
            return {}
        suffix = " ORDER BY id FOR UPDATE" if lock else ""
        found = self._tasks(f"SELECT {pg._COLS} FROM tasks WHERE id = ANY(%s){suffix}", (sorted(set(ids)),))
        return {uuid.UUID(str(t.id)): t for t in found}

    def claim(self, claims: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> list[Task | None]:
        ids = [c[0] for c in claims]
        keep = batch.first_of_each_id(ids)
        if not keep:
            return []
        rows = self._tasks(_CLAIMS_SQL, batch.claims_params([claims[k] for k in keep], node, lease_s))
        return batch.in_order(ids, keep, rows)

    def finish(self, outcomes: Sequence[Outcome], node: str) -> list[Task | None]:
        ids = [o.task_id for o in outcomes]
        keep = batch.first_of_each_id(ids)
        if not keep:
            return []
        rows = self._tasks(_OUTCOMES_SQL, batch.outcomes_params([outcomes[k] for k in keep], node))
        return batch.in_order(ids, keep, rows)

    def update(self, task: Task, to_status: TaskStatus | None, *, node: str | None = None,
               detail: str | None = None, publish: bool = False, **changes: Any) -> Task:
        query, params, _ = pg.plan_update(task, to_status, node, detail, changes, publish)
        written = self._tasks(query, params)
        if written:
            return written[0]
        if not self._fetch("SELECT 1 FROM tasks WHERE id = $1", [task.id]):
            raise TaskNotFound(task.id)
        raise ConcurrentUpdate(task.id)

    def insert(self, tasks: Sequence[Task], *, detail: str | None, publish: bool) -> list[tuple[Task, bool]]:
        results: list[tuple[Task, bool]] = []
        for task in tasks:
            if self._fetch(*_args(pg._INSERT_SQL, [*pg.task_values(task), detail, publish])):
                results.append((task, True))  # only the id comes back: the task is the one inserted
                continue
            existing = self._conflicting(task)
            if existing is None:
                raise ConcurrentUpdate(task.id)
            results.append((existing, False))
        return results

    def _conflicting(self, task: Task) -> Task | None:
        if task.idempotency_key is not None:
            found = self._tasks(f"SELECT {pg._COLS} FROM tasks WHERE idempotency_key = %s", (task.idempotency_key,))
            if found:
                return found[0]
        unique = (task.flow or {}).get("unique_key")
        if isinstance(unique, str):
            rows = self._fetch(_ACTIVE_UNIQUE, [unique])
            if rows:
                return pg._make_task(rows[0])
        found = self._tasks(f"SELECT {pg._COLS} FROM tasks WHERE id = %s", (task.id,))
        return found[0] if found else None

    def pinned_nodes(self) -> list[str]:
        return [r[0] for r in self._fetch(f"SELECT DISTINCT (flow->>'node') FROM tasks WHERE {_PINNED}", [])]

    def pinned_waiting(self, node: str, limit: int) -> list[Task]:
        return self._tasks(f"SELECT {pg._COLS} FROM tasks WHERE (flow->>'node') = %s AND {_PINNED} LIMIT %s",
                           (node, limit))

    def nodes(self) -> list[NodeInfo]:
        rows = self._fetch(f"SELECT {pg._NODE_COLS} FROM nodes ORDER BY started_at, id", [])
        return [NodeInfo(r[0], r[1], r[2], tuple(r[3]), *r[4:]) for r in rows]

    def lock_buckets(self, buckets: Sequence[tuple[str, str, str]]) -> None:
        for kind, name, key in buckets:
            self._fetch("INSERT INTO flow_buckets (kind, name, key) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        [kind, name, key])
            self._fetch("SELECT 1 FROM flow_buckets WHERE kind = $1 AND name = $2 AND key = $3 FOR UPDATE",
                        [kind, name, key])


@contextmanager
def loop_transaction(store: LoopStore, *, write: bool = True) -> Iterator[AsyncFlowTx]:
    """A connection of the worker's pool (in a transaction when ``write``), for a store thread."""
    loop = store.loop
    pool = store.db.pool()

    def wait(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(_TIMEOUT_S)

    async def acquire() -> asyncpg.Connection:
        return await pool.acquire()

    try:
        conn = wait(acquire())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise StoreError(f"postgres store: no connection: {exc!r}") from exc
    transaction = conn.transaction() if write else None
    done = False
    try:
        if transaction is not None:
            wait(transaction.start())
        yield AsyncFlowTx(conn, loop)
        if transaction is not None:
            wait(transaction.commit())
        done = True
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise StoreError(f"postgres store: flow transaction failed: {exc!r}") from exc
    finally:
        if not done and transaction is not None:
            try:
                wait(transaction.rollback())
            except Exception:  # in doubt: never back to the pool as it is
                loop.call_soon_threadsafe(conn.terminate)
        wait(pool.release(conn))
