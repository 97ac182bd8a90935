"""The PostgreSQL store's statements and row mapping, with no driver: the synchronous store
(``postgres.py``, psycopg) and the worker's (``postgres_async.py``, asyncpg) run the same SQL.
Placeholders are psycopg's (``%s``, ``%(name)s``); ``postgres_async`` rewrites them."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from conveyor.model import NodeInfo, Task, TaskStatus, check_transition
from conveyor.store import postgres_batch as batch

_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Task))
_COLS = ", ".join(_FIELDS)  # table columns in Task field order: a row is Task(*row)
_STATUS_AT = _FIELDS.index("status")
_STATUSES = {s.value: s for s in TaskStatus}
_JSON_FIELDS = frozenset({"params", "result", "error", "flow"})
_JSON_AT = tuple(i for i, name in enumerate(_FIELDS) if name in _JSON_FIELDS)
# Identity, the CAS token, and status (written through to_status) are never plain changes.
_CHANGEABLE = frozenset(_FIELDS) - {"id", "status", "version"}
_EVENT_COLS = "task_id, from_status, to_status, at, node, detail"
_NODE_COLS = "id, host, pid, queues, concurrency, started_at, last_heartbeat, status, in_flight, done"

# A new task, its creation event and (``publish``) its outbox intent, in one statement. ON CONFLICT
# without a target: an idempotency key already taken, or an id a worker already adopted from the
# message, both insert nothing.
_INSERT_SQL = f"""
WITH c AS (SELECT {batch.CLOCK} AS now), t AS (
    INSERT INTO tasks ({_COLS}) VALUES ({", ".join(["%s"] * len(_FIELDS))})
    ON CONFLICT DO NOTHING
    RETURNING id, status, version
), e AS (
    INSERT INTO task_events ({_EVENT_COLS})
    SELECT id, NULL, status, c.now, NULL, %s::text FROM t, c
), o AS (
    INSERT INTO task_outbox (task_id, version, at) SELECT id, version, c.now FROM t, c WHERE %s::bool
)
SELECT id FROM t
"""  # only the id comes back: the caller has the task it inserted



_UPSERT_NODE_SQL = (
    f"INSERT INTO nodes ({_NODE_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{col} = EXCLUDED.{col}" for col in _NODE_COLS.split(", ")[1:])
)


def _node_values(node: NodeInfo) -> tuple[Any, ...]:
    return (node.id, node.host, node.pid, list(node.queues), node.concurrency, node.started_at,
            node.last_heartbeat, node.status, node.in_flight, node.done)


def _make_task(values: Sequence[Any]) -> Task:
    row = list(values)
    row[_STATUS_AT] = _STATUSES[row[_STATUS_AT]]
    return Task(*row)


def task_values(task: Task) -> list[Any]:
    """The task's column values in ``_FIELDS`` order (JSON values as they are, at ``_JSON_AT``)."""
    values = [getattr(task, name) for name in _FIELDS]
    values[_STATUS_AT] = task.status.value
    return values


@functools.lru_cache(maxsize=256)
def _update_sql(columns: tuple[str, ...], with_event: bool, publish: bool) -> str:
    """The CAS statement that sets ``columns``; cached so psycopg can prepare it once per shape."""
    sets = "".join(f"{col} = %s, " for col in columns)
    update = f"UPDATE tasks SET {sets}version = version + 1 WHERE id = %s AND version = %s RETURNING {_COLS}"
    if not with_event and not publish:
        return update
    event = f"""e AS (
    INSERT INTO task_events ({_EVENT_COLS})
    SELECT id, %s::text, %s::text, {batch.CLOCK}, %s::text, %s::text FROM u
), """ if with_event else ""
    outbox = f"""o AS (
    INSERT INTO task_outbox (task_id, version, at) SELECT id, version, {batch.CLOCK} FROM u
    ON CONFLICT (task_id) DO UPDATE SET version = EXCLUDED.version, at = EXCLUDED.at
), """ if publish else ""
    return f"WITH u AS ({update}), {event}{outbox}x AS (SELECT 1) SELECT {_COLS} FROM u"


def plan_update(
    task: Task, to_status: TaskStatus | None, node: str | None, detail: str | None, changes: dict[str, Any],
    publish: bool = False,
) -> tuple[str, list[Any], list[int]]:
    """Validate one update and return its statement, its parameters (nothing is sent) and the
    positions of the JSON ones (each driver adapts those its own way)."""
    unknown = set(changes) - _CHANGEABLE
    if unknown:
        raise TypeError(f"update() cannot change {sorted(unknown)}")
    columns: list[str] = []
    values: list[Any] = []
    json_at: list[int] = []
    if to_status is not None:
        check_transition(task.id, task.status, to_status)
        columns.append("status")
        values.append(to_status.value)
    if node is not None:
        changes = {**changes, "node": node}
    for name, value in changes.items():
        columns.append(name)
        if name in _JSON_FIELDS:
            json_at.append(len(values))
        values.append(value)
    values += [task.id, task.version]
    if to_status is not None:
        values += [task.status.value, to_status.value, node, detail]
    return _update_sql(tuple(columns), to_status is not None, publish), values, json_at
