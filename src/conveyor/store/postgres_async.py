"""The PostgreSQL store as the worker's event loop speaks it: asyncpg, no thread, no psycopg.

``PostgresStore`` (psycopg, synchronous) serves the API, the CLI, the scheduler and submitters.
A worker process needs only a few of its statements, and needs them on its event loop: this
module runs those same statements (``postgres.py`` and ``postgres_batch.py`` are their one
source; the placeholders are rewritten for asyncpg) over a small asyncpg pool. asyncpg costs
the worker about half the client CPU per statement of psycopg and a third of its memory.

``LoopStore`` puts the ``Store`` methods the worker's rare paths need (the slow claim, the
reaper, the outbox reconciler, heartbeats) in front of it for code running on a thread: each
call runs on the worker's loop and waits. Never call it from the loop itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sys
import time
import uuid
from collections.abc import Sequence
from importlib import resources
from typing import Any

import asyncpg
import orjson

from conveyor.errors import ConcurrentUpdate, ConveyorError, StoreError, StoreRefused, TaskNotFound
from conveyor.message import dumps
from conveyor.model import NodeInfo, Task, TaskStatus
from conveyor.store import postgres_batch as batch
from conveyor.store import postgres_sql as pg
from conveyor.store.base import Outcome

_CLOCK_REFRESH_S = 60.0
# A statement unanswered this long is given up (asyncpg's command_timeout) and its connection
# dropped: without it a write sent into a network cut hangs until TCP gives up (~15 min), holding
# its slot. No worker statement takes near this long, and a lease (30 s by default) is gone by then.
STATEMENT_TIMEOUT_S = 30.0
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")


@functools.lru_cache(maxsize=128)
def positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """psycopg placeholders (``%(name)s``, ``%s``) as asyncpg's ``$n``; returns the statement
    and the parameter names in ``$n`` order (``""`` for each positional ``%s``)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            names.append("")
            return f"${len(names)}"
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PLACEHOLDER.sub(number, sql), tuple(names)


def _args(sql: str, params: dict[str, Any] | Sequence[Any]) -> tuple[str, list[Any]]:
    text, names = positional(sql)
    if isinstance(params, dict):
        return text, [params[n] for n in names]
    return text, list(params)


_CYCLE_SQL = batch.cycle_sql(pg._EVENT_COLS)


class AsyncPostgres:
    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 3,
                 statement_timeout_s: float = STATEMENT_TIMEOUT_S) -> None:
        self.url = url
        self._min_size, self._max_size = min_size, max_size
        self._statement_timeout_s = statement_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._claims: asyncpg.Pool | None = None  # synchronous_commit off: cycles that only claim
        self._clock_offset = 0.0
        self._clock_read_at = -_CLOCK_REFRESH_S

    async def open(self) -> None:
        async def init(conn: asyncpg.Connection) -> None:
            await conn.set_type_codec("jsonb", encoder=lambda v: dumps(v).decode(), decoder=orjson.loads,
                                      schema="pg_catalog")

        settings = {"plan_cache_mode": "force_generic_plan", **{s: "off" for s in batch.BY_KEY}}
        try:
            # reset=_nothing: by default a pool resets every connection it gets back (a round trip
            # per statement); these connections keep no session state to reset.
            self._pool = await asyncpg.create_pool(self.url, min_size=self._min_size, max_size=self._max_size,
                                                   init=init, reset=_nothing, server_settings=settings,
                                                   command_timeout=self._statement_timeout_s)
            # A cycle that only claims need not wait for the disk: a claim lost in a server crash
            # is redone from its message (still unacked), and should its handler have finished,
            # the fenced outcome finds the task back in its queue and hands the delivery back.
            self._claims = await asyncpg.create_pool(
                self.url, min_size=1, max_size=1, init=init, reset=_nothing,
                server_settings={**settings, "synchronous_commit": "off"}, command_timeout=self._statement_timeout_s)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"postgres store: connect failed: {exc}") from exc
        await self.refresh_clock()

    async def close(self) -> None:
        for pool in (self._pool, self._claims):
            if pool is not None:
                await pool.close()

    def pool(self) -> asyncpg.Pool:
        """The pool itself, for flow control's multi-statement transactions (postgres_async_flow.py)."""
        assert self._pool is not None
        return self._pool

    async def ensure_schema(self) -> None:
        """Apply pending migrations (with psycopg, only if any is pending: the worker need not
        load a second driver to find out)."""
        try:
            rows = await self._fetch("SELECT coalesce(max(version), 0) FROM schema_migrations", ())
            current = int(rows[0][0])
        except StoreError:
            current = 0  # no schema_migrations table: a new database
        if current < latest_migration():
            from conveyor.store.migrate import upgrade

            await asyncio.to_thread(upgrade, self.url)

    async def _fetch(self, sql: str, params: dict[str, Any] | Sequence[Any], *, durable: bool = True) -> list[Any]:
        text, args = _args(sql, params)
        pool = self._pool if durable else self._claims
        assert pool is not None
        try:
            async with pool.acquire() as conn:
                try:
                    rows: list[Any] = await conn.fetch(text, *args)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError):
                    if conn.is_closed() or not _about_the_data(sys.exc_info()[1]):
                        conn.terminate()  # the pool opens a fresh one: never reuse a connection in doubt
                    raise
                return rows
        except asyncpg.PostgresError as exc:
            refused = (getattr(exc, "sqlstate", None) or "").startswith("22")
            raise (StoreRefused if refused else StoreError)(f"postgres store: {_describe(exc)}") from exc
        except TimeoutError as exc:
            raise StoreError(f"postgres store: no answer within {self._statement_timeout_s:g} s") from exc
        except (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
            raise StoreError(f"postgres store: connection lost: {exc!r}") from exc

    # -- the clock --------------------------------------------------------------------------
    async def refresh_clock(self) -> None:
        before = time.time()
        rows = await self._fetch(f"SELECT {batch.CLOCK}", ())
        after = time.time()
        self._clock_offset = float(rows[0][0]) - (before + after) / 2
        self._clock_read_at = time.monotonic()

    def now(self) -> float:
        return time.time() + self._clock_offset

    def clock_stale(self) -> bool:
        return time.monotonic() - self._clock_read_at >= _CLOCK_REFRESH_S

    # -- the hot path ---------------------------------------------------------------------------
    async def cycle(self, outcomes: Sequence[Outcome], claims: Sequence[tuple[uuid.UUID, int]], node: str,
                    lease_s: float) -> list[Any]:
        """One statement: record ``outcomes``, claim ``claims``; rows of (kind, id, status,
        version, eta), kind 'f' for an outcome written and 'c' for a claim made."""
        return await self._fetch(_CYCLE_SQL, batch.cycle_params(outcomes, claims, node, lease_s),
                                 durable=bool(outcomes))

    async def renew(self, leases: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> set[uuid.UUID]:
        if not leases:
            return set()
        rows = await self._fetch(batch.RENEW_SQL, batch.renew_params(leases, node, lease_s))
        return {row[0] for row in rows}

    # -- the rare paths (behind LoopStore) ---------------------------------------------------
    async def get(self, task_id: uuid.UUID) -> Task:
        rows = await self._fetch(f"SELECT {pg._COLS} FROM tasks WHERE id = %s", (task_id,))
        if not rows:
            raise TaskNotFound(task_id)
        return pg._make_task(rows[0])

    async def create(self, task: Task, detail: str | None, publish: bool) -> tuple[Task, bool]:
        rows = await self._fetch(pg._INSERT_SQL, [*pg.task_values(task), detail, publish])
        if rows:
            return task, True
        if task.idempotency_key is not None:
            found = await self._fetch(f"SELECT {pg._COLS} FROM tasks WHERE idempotency_key = %s",
                                      (task.idempotency_key,))
            if found:
                return pg._make_task(found[0]), False
        return await self.get(task.id), False

    async def update(self, task: Task, to_status: TaskStatus | None, node: str | None, detail: str | None,
                     publish: bool, changes: dict[str, Any]) -> Task:
        query, params, _ = pg.plan_update(task, to_status, node, detail, changes, publish)
        rows = await self._fetch(query, params)
        if rows:
            return pg._make_task(rows[0])
        exists = await self._fetch("SELECT 1 FROM tasks WHERE id = %s", (task.id,))
        if not exists:
            raise TaskNotFound(task.id)
        raise ConcurrentUpdate(task.id)

    async def expired_leases(self, older_than_s: float, limit: int) -> list[Task]:
        rows = await self._fetch(
            f"SELECT {pg._COLS} FROM tasks WHERE status = 'running' AND lease_until < {batch.CLOCK} - %s"
            " ORDER BY lease_until LIMIT %s", (older_than_s, limit))
        return [pg._make_task(r) for r in rows]

    async def unpublished(self, older_than_s: float, limit: int) -> list[Task]:
        cols = ", ".join("t." + c for c in pg._FIELDS)
        rows = await self._fetch(
            f"SELECT {cols} FROM task_outbox o JOIN tasks t ON t.id = o.task_id"
            f" WHERE o.at < {batch.CLOCK} - %s ORDER BY o.at LIMIT %s", (older_than_s, limit))
        await self._fetch(f"DELETE FROM task_outbox o WHERE o.at < {batch.CLOCK} - %s"
                          " AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = o.task_id)", (older_than_s,))
        return [pg._make_task(r) for r in rows]

    async def mark_published(self, tasks: Sequence[Task]) -> None:
        if tasks:
            await self._fetch("DELETE FROM task_outbox o USING unnest(%s::uuid[], %s::int[]) AS d(id, version)"
                              " WHERE o.task_id = d.id AND o.version <= d.version",
                              ([t.id for t in tasks], [t.version for t in tasks]))

    async def upsert_node(self, node: NodeInfo) -> None:
        await self._fetch(pg._UPSERT_NODE_SQL, pg._node_values(node))


async def _nothing(conn: asyncpg.Connection) -> None:
    return None


def latest_migration() -> int:
    folder = resources.files("conveyor.store").joinpath("sql", "migrations")
    return max(int(entry.name[:4]) for entry in folder.iterdir() if entry.name[:4].isdigit())


def _about_the_data(exc: BaseException | None) -> bool:
    """An error about the statement or its values (the connection is fine), by SQLSTATE class:
    22 data exception, 23 integrity, 42 syntax or access."""
    code = getattr(exc, "sqlstate", None) or ""
    return isinstance(exc, asyncpg.PostgresError) and code[:2] in ("22", "23", "42")


def _describe(exc: asyncpg.PostgresError) -> str:
    """The server's message without DETAIL (it can quote row values) and its SQLSTATE."""
    code = getattr(exc, "sqlstate", None)
    text = str(getattr(exc, "message", None) or exc).splitlines()[0]
    return f"{text} [{code}]" if code else text


class LoopStore:
    """The ``Store`` methods a worker's rare paths use, for code on a thread: each runs on
    ``loop`` through ``AsyncPostgres`` and waits."""

    def __init__(self, db: AsyncPostgres, loop: asyncio.AbstractEventLoop, timeout_s: float = 60.0) -> None:
        self.db = db
        self.url = db.url
        self.loop = loop  # flow control's transactions run their statements here (postgres_async_flow.py)
        self._loop = loop
        self._timeout_s = timeout_s

    def _wait(self, coro: Any) -> Any:
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self._timeout_s)
        except TimeoutError as exc:
            raise StoreError(f"postgres store: no answer within {self._timeout_s:g} s") from exc

    def now(self) -> float:
        if self.db.clock_stale():
            with contextlib.suppress(ConveyorError):  # keep the last offset: a read must not fail a caller
                self._wait(self.db.refresh_clock())
        return self.db.now()

    def get(self, task_id: uuid.UUID) -> Task:
        task: Task = self._wait(self.db.get(task_id))
        return task

    def create(self, task: Task, *, detail: str | None = None, publish: bool = True) -> tuple[Task, bool]:
        result: tuple[Task, bool] = self._wait(self.db.create(task, detail, publish))
        return result

    def update(self, task: Task, to_status: TaskStatus | None, *, node: str | None = None,
               detail: str | None = None, publish: bool = False, **changes: Any) -> Task:
        written: Task = self._wait(self.db.update(task, to_status, node, detail, publish, changes))
        return written

    def expired_leases(self, older_than_s: float, limit: int = 100) -> list[Task]:
        tasks: list[Task] = self._wait(self.db.expired_leases(older_than_s, limit))
        return tasks

    def unpublished(self, older_than_s: float, limit: int = 500) -> list[Task]:
        tasks: list[Task] = self._wait(self.db.unpublished(older_than_s, limit))
        return tasks

    def mark_published(self, tasks: Sequence[Task]) -> None:
        self._wait(self.db.mark_published(tasks))

    def upsert_node(self, node: NodeInfo) -> None:
        self._wait(self.db.upsert_node(node))

    def claim_many(self, claims: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> list[Task | None]:
        raise NotImplementedError("the worker claims through its cycle")

    def close(self) -> None:
        """The worker closes the pool on its loop."""
