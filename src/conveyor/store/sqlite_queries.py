"""The console queries (``store/queries.py``) on the embedded SQLite store, on its connection."""

from __future__ import annotations

import uuid

from conveyor.model import Page
from conveyor.store.queries import MAX_PAGE, TaskSearch, normalize_prefix, where_clause
from conveyor.store.sqlite import _SELECT, SqliteStore, _row_to_task


class SqliteQueries:
    def __init__(self, store: SqliteStore) -> None:
        self._db = store._db  # same package: the store's own connection and lock

    def search(self, search: TaskSearch, *, limit: int = 50, cursor: uuid.UUID | None = None) -> Page:
        limit = max(1, min(limit, MAX_PAGE))
        where, params = where_clause(search, cursor, "?", str)
        sql = _SELECT + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?"
        with self._db.locked() as conn:
            rows = conn.execute(sql, (*params, limit)).fetchall()
        tasks = [_row_to_task(r) for r in rows]
        return Page(tasks, tasks[-1].id if len(tasks) == limit else None)

    def ids_with_prefix(self, prefix: str, limit: int = 6) -> list[uuid.UUID]:
        where, params = where_clause(TaskSearch(id_prefix=normalize_prefix(prefix)), None, "?", str)
        with self._db.locked() as conn:
            rows = conn.execute(f"SELECT id FROM tasks WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
                                (*params, limit)).fetchall()
        return [uuid.UUID(r[0]) for r in rows]

    def oldest_waiting(self) -> dict[str, float]:
        with self._db.locked() as conn:
            # Covered by the partial index tasks_queued_by_queue (created with the statistics).
            rows = conn.execute(
                "SELECT queue, min(queued_at) FROM tasks WHERE status = 'queued' GROUP BY queue"
            ).fetchall()
        return {queue: at for queue, at in rows if at is not None}

    def finished_since(self, since: float) -> dict[str, int]:
        with self._db.locked() as conn:
            # "+queue": group after the finished_at index range, rather than walk the whole queue index.
            rows = conn.execute("SELECT queue, count(*) FROM tasks WHERE finished_at >= ? GROUP BY +queue",
                                (since,)).fetchall()
        return {queue: int(n) for queue, n in rows}
