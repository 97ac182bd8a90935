"""Statistics in PostgreSQL (tables from migration 0004), on the store's connection pool."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from conveyor.errors import StoreError
from conveyor.stats.store import _ADVISORY_KEY, Run, RunMany, StatsStore
from conveyor.store.postgres import PostgresStore


class PostgresStats(StatsStore):
    _mark = "%s"
    _gapless = False

    def __init__(self, store: PostgresStore) -> None:
        super().__init__()
        self._pool = store._pool  # same package family: the store's own pool

    @contextmanager
    def _transaction(self, snapshot: bool = False) -> Iterator[tuple[Run, RunMany]]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                if snapshot:
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                # The store's connections force generic plans; the fold's batch size and watermark
                # matter to its plan (a generic one may hash-join the whole tasks table).
                conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))

                def run(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
                    cur = conn.execute(sql, params)
                    return cur.fetchall() if cur.description else []

                def run_many(sql: str, rows: Sequence[Sequence[Any]]) -> None:
                    with conn.cursor() as cur:
                        cur.executemany(sql, rows)

                yield run, run_many
        except psycopg.Error as exc:
            raise StoreError(f"postgres statistics: {exc}") from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(sql.replace("?", "%s"), params).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"postgres statistics: {exc}") from exc

    def _delete_finished(self, run: Run, finished_before: float, limit: int) -> list[tuple[str, str]]:
        # The events go in the same statement (no foreign key cascades them since 0003);
        # SKIP LOCKED: never wait on a row a worker holds.
        rows = run("WITH d AS (DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE finished_at < %s"
                   " ORDER BY finished_at LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, queue, status),"
                   " e AS (DELETE FROM task_events WHERE task_id IN (SELECT id FROM d))"
                   " SELECT queue, status FROM d", (finished_before, limit))
        return [(queue, status) for queue, status in rows]
