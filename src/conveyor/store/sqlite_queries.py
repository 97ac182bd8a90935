"""The console queries (``store/queries.py``) on the embedded SQLite store, on its connection.

SQLite's planner knows how many rows an index holds but not how often one value occurs, so a
search on two columns (failed tasks of a rare queue) may walk the index of the common value and
read thousands of rows to fill a page. When several columns are filtered, ``search`` first
counts each value's rows, capped at ``_PROBE_CAP`` (an index-only count, well under a
millisecond), and walks the index of the rarest."""

from __future__ import annotations

import sqlite3
import uuid

from conveyor.model import Page, TaskStatus
from conveyor.store.queries import MAX_PAGE, TaskSearch, normalize_prefix, where_clause
from conveyor.store.sqlite import _SELECT, SqliteStore, _row_to_task

_PROBE_CAP = 2000
_COLUMN_INDEX = {"status": "tasks_status_id", "type": "tasks_type_id", "queue": "tasks_queue_id",
                 "node": "tasks_node_id"}


class SqliteQueries:
    def __init__(self, store: SqliteStore) -> None:
        self._db = store._db  # same package: the store's own connection and lock

    def search(self, search: TaskSearch, *, limit: int = 50, cursor: uuid.UUID | None = None) -> Page:
        limit = max(1, min(limit, MAX_PAGE))
        where, params = where_clause(search, cursor, "?", str)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._db.locked() as conn:
            index = self._rarest(conn, search)
            if index is not None:
                try:
                    rows = conn.execute(f"{_SELECT} INDEXED BY {index}{clause} ORDER BY id DESC LIMIT ?",
                                        (*params, limit)).fetchall()
                except sqlite3.OperationalError:  # no such index in this file: let the planner choose
                    index = None
            if index is None:
                rows = conn.execute(f"{_SELECT}{clause} ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        tasks = [_row_to_task(r) for r in rows]
        return Page(tasks, tasks[-1].id if len(tasks) == limit else None)

    @staticmethod
    def _rarest(conn: sqlite3.Connection, search: TaskSearch) -> str | None:
        """The index of the rarest filtered value, when several columns are filtered and one
        value is rare (fewer than ``_PROBE_CAP`` rows); None to leave it to the planner."""
        filtered = {column: getattr(search, column) for column in _COLUMN_INDEX if getattr(search, column) is not None}
        if len(filtered) < 2:
            return None
        counts = {}
        for column, value in filtered.items():
            value = value.value if isinstance(value, TaskStatus) else value
            counts[column] = conn.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM tasks INDEXED BY {_COLUMN_INDEX[column]} WHERE {column} = ?"
                " LIMIT ?)", (value, _PROBE_CAP)).fetchone()[0]
        column = min(counts, key=lambda c: counts[c])
        return _COLUMN_INDEX[column] if counts[column] < _PROBE_CAP else None

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
