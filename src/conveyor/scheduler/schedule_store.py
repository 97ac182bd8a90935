"""Persistence of schedules and of the scheduler leader lease, chosen by store URL.

Two tables beside the task store's own (each implementation opens its own connection from the
store URL and creates them if missing; on PostgreSQL a ``search_path`` given in the URL picks
the schema)::

    schedules        one row per schedule; ``version`` is the compare-and-set token
    scheduler_leases name PRIMARY KEY, holder, expires_at: who may fire schedules until when

Every method is one statement, hence atomic; the SQL is shared (SQLite >= 3.35 and PostgreSQL
both speak ``INSERT ... ON CONFLICT ... DO UPDATE ... WHERE`` and ``RETURNING``), only the DDL
and the parameter style differ.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import orjson

from conveyor.errors import ConfigError, StoreError
from conveyor.message import dumps
from conveyor.scheduler.schedules import Schedule

log = logging.getLogger(__name__)

_COLUMNS = ("name", "type", "params", "cron", "timezone", "interval_s", "queue", "priority", "enabled",
            "misfire", "next_fire_at", "last_fired_at", "created_at", "updated_at", "version")
_COLS = ", ".join(_COLUMNS)

_DDL = """
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY, type TEXT NOT NULL, params TEXT NOT NULL, cron TEXT, timezone TEXT NOT NULL,
    interval_s {real}, queue TEXT, priority INTEGER, enabled INTEGER NOT NULL, misfire TEXT NOT NULL,
    next_fire_at {real}, last_fired_at {real}, created_at {real} NOT NULL, updated_at {real} NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS schedules_due ON schedules (next_fire_at) WHERE enabled = 1;
CREATE TABLE IF NOT EXISTS scheduler_leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at {real} NOT NULL
)
"""


class ScheduleNotFound(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown schedule {name!r}")
        self.name = name


class DuplicateSchedule(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a schedule named {name!r} already exists")
        self.name = name


class ScheduleChanged(StoreError):
    """Compare-and-set lost: the schedule was written since it was read."""

    def __init__(self, name: str) -> None:
        super().__init__(f"schedule {name!r} was changed concurrently; read it again")
        self.name = name


class ScheduleStore(Protocol):
    def all(self) -> list[Schedule]: ...
    def due(self, at: float) -> list[Schedule]: ...
    def get(self, name: str) -> Schedule: ...
    def create(self, schedule: Schedule) -> Schedule: ...
    def update(self, schedule: Schedule) -> Schedule: ...
    def upsert(self, schedule: Schedule) -> Schedule: ...
    def delete(self, name: str) -> None: ...
    def record_fire(self, schedule: Schedule, next_fire_at: float, last_fired_at: float | None) -> bool: ...
    def acquire_lease(self, name: str, holder: str, at: float, ttl_s: float) -> bool: ...
    def release_lease(self, name: str, holder: str) -> None: ...
    def lease(self, name: str) -> tuple[str, float] | None: ...
    def close(self) -> None: ...


def open_schedule_store(url: str) -> ScheduleStore:
    if url.startswith("sqlite:"):
        return SqliteScheduleStore(url)
    if url.startswith(("postgresql:", "postgres:")):
        return PostgresScheduleStore(url)
    raise ConfigError(f"unsupported store URL {url!r}: use sqlite:///PATH or postgresql://...")


def _to_row(s: Schedule) -> tuple[Any, ...]:
    return (s.name, s.type, dumps(s.params).decode(), s.cron, s.timezone, s.interval_s, s.queue, s.priority,
            int(s.enabled), s.misfire, s.next_fire_at, s.last_fired_at, s.created_at, s.updated_at, s.version)


def _from_row(row: Sequence[Any]) -> Schedule:
    data = dict(zip(_COLUMNS, row, strict=True))
    data["params"] = orjson.loads(data["params"])
    data["enabled"] = bool(data["enabled"])
    return Schedule(**data)


class _SqlScheduleStore:
    """The shared SQL; subclasses supply ``_run`` (execute one statement, return its rows)."""

    _placeholder = "?"

    def _run(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[tuple[Any, ...]], int]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    def all(self) -> list[Schedule]:
        rows, _ = self._run(f"SELECT {_COLS} FROM schedules ORDER BY name")
        return [_from_row(r) for r in rows]

    def due(self, at: float) -> list[Schedule]:
        """Enabled schedules whose next fire time is ``at`` or earlier."""
        rows, _ = self._run(self._sql(
            f"SELECT {_COLS} FROM schedules WHERE enabled = 1 AND next_fire_at <= ? ORDER BY next_fire_at"
        ), (at,))
        return [_from_row(r) for r in rows]

    def get(self, name: str) -> Schedule:
        rows, _ = self._run(self._sql(f"SELECT {_COLS} FROM schedules WHERE name = ?"), (name,))
        if not rows:
            raise ScheduleNotFound(name)
        return _from_row(rows[0])

    def create(self, schedule: Schedule) -> Schedule:
        stored = schedule.replace(version=1)
        marks = ", ".join("?" * len(_COLUMNS))
        rows, _ = self._run(self._sql(
            f"INSERT INTO schedules ({_COLS}) VALUES ({marks}) ON CONFLICT (name) DO NOTHING RETURNING name"
        ), _to_row(stored))
        if not rows:
            raise DuplicateSchedule(schedule.name)
        return stored

    def update(self, schedule: Schedule) -> Schedule:
        """Write the whole schedule if nobody changed it since it was read (by version)."""
        sets = ", ".join(f"{c} = ?" for c in _COLUMNS[1:-1])
        rows, _ = self._run(self._sql(
            f"UPDATE schedules SET {sets}, version = version + 1 WHERE name = ? AND version = ?"
            " RETURNING version"
        ), (*_to_row(schedule)[1:-1], schedule.name, schedule.version))
        if rows:
            return schedule.replace(version=rows[0][0])
        self.get(schedule.name)  # raises ScheduleNotFound if it is gone
        raise ScheduleChanged(schedule.name)

    def upsert(self, schedule: Schedule) -> Schedule:
        """Create ``schedule`` or, when its definition changed, redefine the stored one (keeping
        its enabled flag and, for an unchanged timing, its fire state). Used for code-declared
        schedules, which every scheduler replica upserts on start."""
        for _ in range(5):
            try:
                current = self.get(schedule.name)
            except ScheduleNotFound:
                try:
                    return self.create(schedule)
                except DuplicateSchedule:
                    continue
            if current.same_definition(schedule):
                return current
            changes = {k: getattr(schedule, k) for k in
                       ("type", "params", "cron", "timezone", "interval_s", "queue", "priority", "misfire")}
            try:
                return self.update(current.redefine(**changes))
            except (ScheduleNotFound, ScheduleChanged):
                continue
        raise StoreError(f"schedule {schedule.name!r}: upsert kept racing")

    def delete(self, name: str) -> None:
        _, count = self._run(self._sql("DELETE FROM schedules WHERE name = ?"), (name,))
        if count == 0:
            raise ScheduleNotFound(name)

    def record_fire(self, schedule: Schedule, next_fire_at: float, last_fired_at: float | None) -> bool:
        """Advance the fire state if the schedule is unchanged since read; False otherwise."""
        _, count = self._run(self._sql(
            "UPDATE schedules SET next_fire_at = ?, last_fired_at = COALESCE(?, last_fired_at),"
            " version = version + 1 WHERE name = ? AND version = ?"
        ), (next_fire_at, last_fired_at, schedule.name, schedule.version))
        return count == 1

    # -- leader lease -------------------------------------------------------------------
    def acquire_lease(self, name: str, holder: str, at: float, ttl_s: float) -> bool:
        """Take or renew the lease: compare-and-set, succeeds when the row is ours or expired."""
        rows, _ = self._run(self._sql(
            "INSERT INTO scheduler_leases (name, holder, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at"
            " WHERE scheduler_leases.holder = excluded.holder OR scheduler_leases.expires_at < ?"
            " RETURNING holder"
        ), (name, holder, at + ttl_s, at))
        return bool(rows) and rows[0][0] == holder

    def release_lease(self, name: str, holder: str) -> None:
        """Let the lease go now (clean shutdown), so a standby takes over at its next try."""
        self._run(self._sql("UPDATE scheduler_leases SET expires_at = 0 WHERE name = ? AND holder = ?"),
                  (name, holder))

    def lease(self, name: str) -> tuple[str, float] | None:
        rows, _ = self._run(self._sql("SELECT holder, expires_at FROM scheduler_leases WHERE name = ?"),
                            (name,))
        return (rows[0][0], rows[0][1]) if rows else None


class SqliteScheduleStore(_SqlScheduleStore):
    """Schedules in the embedded SQLite file (the task store's file, separate connection)."""

    def __init__(self, url: str) -> None:
        from conveyor._sqlite import SqliteFile

        self._db = SqliteFile(url, StoreError, "schedule store", _DDL.format(real="REAL"))

    def _run(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[tuple[Any, ...]], int]:
        with self._db.locked() as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall(), cursor.rowcount

    def close(self) -> None:
        self._db.close()


class PostgresScheduleStore(_SqlScheduleStore):
    """Schedules in PostgreSQL: one autocommit connection, reopened after a failure."""

    _placeholder = "%s"
    _DDL_LOCK = 0x5C4ED01E  # advisory lock: concurrent CREATE TABLE IF NOT EXISTS can still collide

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0) -> None:
        self._url = url
        self._timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: Any = None
        with self._lock, self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._DDL_LOCK,))
            for statement in _DDL.format(real="DOUBLE PRECISION").split(";"):
                conn.execute(statement)

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        import psycopg

        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=int(self._timeout_s))
            yield self._conn
        except psycopg.Error as exc:
            if self._conn is not None and self._conn.broken:
                self._conn.close()
                self._conn = None
            raise StoreError(f"postgres schedule store: {exc}") from exc

    def _run(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[tuple[Any, ...]], int]:
        with self._lock, self._connection() as conn:
            cursor = conn.execute(sql, params)
            rows = cursor.fetchall() if cursor.description else []
            return rows, cursor.rowcount

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
