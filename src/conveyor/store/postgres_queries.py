"""The console queries (``store/queries.py``) on the PostgreSQL store, on its connection pool.

Each statement walks one index in id order (see migration 0004 for the indexes it relies on).
The store's connections force generic plans (right for the worker's writes, which look up one
id); a search is planned for its own values instead (``force_custom_plan``, set for its
transaction only), so a rare queue or a rare status picks the index that finds it fast."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from conveyor.model import Page
from conveyor.store.postgres import PostgresStore, _driver_errors, _task_rows
from conveyor.store.postgres_sql import _COLS
from conveyor.store.queries import MAX_PAGE, TaskSearch, normalize_prefix, where_clause


class PostgresQueries:
    def __init__(self, store: PostgresStore) -> None:
        self._pool = store._pool  # same package: the store's own pool

    @staticmethod
    def search_sql(search: TaskSearch, *, limit: int, cursor: uuid.UUID | None) -> tuple[str, list[object]]:
        """The statement ``search`` runs (public so tests and the bench can EXPLAIN it)."""
        where, params = where_clause(search, cursor, "%s")
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return f"SELECT {_COLS} FROM tasks {clause}ORDER BY id DESC LIMIT %s", [*params, limit]

    @contextmanager
    def _planned(self, action: str) -> Iterator[psycopg.Connection[Any]]:
        """A connection whose statements are planned for their own values (this transaction only)."""
        with _driver_errors(action), self._pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            yield conn

    def search(self, search: TaskSearch, *, limit: int = 50, cursor: uuid.UUID | None = None) -> Page:
        limit = max(1, min(limit, MAX_PAGE))
        sql, params = self.search_sql(search, limit=limit, cursor=cursor)
        with self._planned("search") as conn:
            tasks = conn.cursor(row_factory=_task_rows).execute(sql, params).fetchall()
        return Page(tasks, tasks[-1].id if len(tasks) == limit else None)

    def ids_with_prefix(self, prefix: str, limit: int = 6) -> list[uuid.UUID]:
        where, params = where_clause(TaskSearch(id_prefix=normalize_prefix(prefix)), None, "%s")
        with self._planned("ids_with_prefix") as conn:
            rows = conn.execute(f"SELECT id FROM tasks WHERE {' AND '.join(where)} ORDER BY id LIMIT %s",
                                (*params, limit)).fetchall()
        return [r[0] for r in rows]

    def oldest_waiting(self) -> dict[str, float]:
        # One index probe per queue on tasks_queued_by_queue (the recursive "loose index scan"
        # finds the distinct queues without reading every queued row).
        sql = """
WITH RECURSIVE q AS (
    (SELECT queue FROM tasks WHERE status = 'queued' ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT t.queue FROM tasks t WHERE t.status = 'queued' AND t.queue > q.queue ORDER BY t.queue LIMIT 1)
    FROM q WHERE q.queue IS NOT NULL
)
SELECT q.queue, (SELECT coalesce(t.queued_at, t.created_at) FROM tasks t
                 WHERE t.status = 'queued' AND t.queue = q.queue ORDER BY t.queued_at LIMIT 1)
FROM q WHERE q.queue IS NOT NULL
"""
        with _driver_errors("oldest_waiting"), self._pool.connection() as conn:
            rows = conn.execute(sql).fetchall()
        return {queue: at for queue, at in rows if at is not None}

    def finished_since(self, since: float) -> dict[str, int]:
        with self._planned("finished_since") as conn:  # a generic plan would walk every finished task
            rows = conn.execute("SELECT queue, count(*) FROM tasks WHERE finished_at >= %s GROUP BY queue",
                                (since,)).fetchall()
        return {queue: int(n) for queue, n in rows}
