"""Statistics in the embedded SQLite file: their own connection, the file's one write lock."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from conveyor._sqlite import SqliteFile
from conveyor.errors import StoreError
from conveyor.stats.store import SQLITE_DDL, Run, RunMany, StatsStore

_CHUNK = 500


class SqliteStats(StatsStore):
    def __init__(self, url: str) -> None:
        super().__init__()
        self._db = SqliteFile(url, StoreError, "statistics", SQLITE_DDL)

    @contextmanager
    def _transaction(self, snapshot: bool = False) -> Iterator[tuple[Run, RunMany]]:
        # BEGIN IMMEDIATE: writers wait, so the transaction is a consistent snapshot.
        with self._db.transaction() as conn:
            def run(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
                return conn.execute(sql, params).fetchall()

            def run_many(sql: str, rows: Sequence[Sequence[Any]]) -> None:
                conn.executemany(sql, rows)

            yield run, run_many

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._db.locked() as conn:
            return conn.execute(sql, params).fetchall()

    def _delete_finished(self, run: Run, finished_before: float, limit: int) -> list[tuple[str, str]]:
        rows = run("SELECT id, queue, status FROM tasks WHERE finished_at < ? ORDER BY finished_at LIMIT ?",
                   (finished_before, limit))
        ids = [r[0] for r in rows]
        # The newest event row always stays: SQLite would hand its seq out again, and the fold's
        # watermark must never see a seq twice.
        newest = run("SELECT max(seq) FROM task_events", ())[0][0] or 0
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            run(f"DELETE FROM task_events WHERE task_id IN ({marks}) AND seq < ?", (*chunk, newest))
            run(f"DELETE FROM tasks WHERE id IN ({marks})", chunk)
        return [(queue, status) for _, queue, status in rows]

    def close(self) -> None:
        self._db.close()
