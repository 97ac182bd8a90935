"""Set-based statements for the worker's two hottest writes: starting an attempt and recording
a success. Concurrent callers are combined (``batching.Combiner``) and a whole batch goes as
ONE statement over arrays (``unnest``), so the per-statement cost of the driver and the
server is paid once per batch rather than once per task. Each row is still a compare-and-set
with its event, exactly as the one-task statements in ``postgres.py``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

# (task id, at, lease_until, node)
StartItem = tuple[uuid.UUID, float, float, str]
# (task id, version, result, finished_at, node)
FinishItem = tuple[uuid.UUID, int, Any, float, str]


def starts_sql(fields: Sequence[str], cols: str, event_cols: str) -> str:
    returned = ", ".join("t." + c for c in fields)
    return f"""
WITH d AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(ats)s::float8[], %(leases)s::float8[], %(nodes)s::text[])
        AS d(id, at, lease, node)
), old AS (
    SELECT t.id, t.status, d.at, d.lease, d.node FROM tasks t JOIN d ON t.id = d.id
    WHERE t.status = 'queued' OR (t.status IN ('scheduled', 'retrying') AND (t.eta IS NULL OR t.eta <= d.at))
    FOR UPDATE OF t
), u AS (
    UPDATE tasks t SET status = 'running', node = old.node, attempts = t.attempts + 1, started_at = old.at,
        lease_until = old.lease, finished_at = NULL, queued_at = coalesce(t.queued_at, old.at),
        version = t.version + 1
    FROM old WHERE t.id = old.id
    RETURNING {returned}, old.status AS from_status, old.at AS ev_at
), e AS (
    INSERT INTO task_events ({event_cols})
    SELECT id, from_status, 'running', ev_at, node, 'attempt ' || attempts FROM u
)
SELECT {cols} FROM u
"""


def finishes_sql(fields: Sequence[str], cols: str, event_cols: str) -> str:
    returned = ", ".join("t." + c for c in fields)
    return f"""
WITH d AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(versions)s::int[], %(results)s::jsonb[], %(finished)s::float8[],
                         %(nodes)s::text[]) AS d(id, version, result, finished_at, node)
), u AS (
    UPDATE tasks t SET status = 'succeeded', result = d.result, error = NULL, finished_at = d.finished_at,
        node = d.node, lease_until = NULL, version = t.version + 1
    FROM d WHERE t.id = d.id AND t.version = d.version AND t.status = 'running'
    RETURNING {returned}
), e AS (
    INSERT INTO task_events ({event_cols})
    SELECT id, 'running', 'succeeded', finished_at, node, NULL FROM u
)
SELECT {cols} FROM u
"""


def jsonb_or_null(value: Any) -> Jsonb | None:
    """A JSON column value: Python None is SQL NULL."""
    return None if value is None else Jsonb(value)


def starts_params(items: Sequence[StartItem]) -> dict[str, Any]:
    return {"ids": [i[0] for i in items], "ats": [i[1] for i in items], "leases": [i[2] for i in items],
            "nodes": [i[3] for i in items]}


def finishes_params(items: Sequence[FinishItem]) -> dict[str, Any]:
    return {"ids": [i[0] for i in items], "versions": [i[1] for i in items],
            "results": [jsonb_or_null(i[2]) for i in items],
            "finished": [i[3] for i in items], "nodes": [i[4] for i in items]}


def first_of_each_id(ids: Sequence[uuid.UUID]) -> list[int]:
    """Indexes of the first occurrence of each id: a batch must not claim one task twice."""
    seen: set[uuid.UUID] = set()
    keep = []
    for index, task_id in enumerate(ids):
        if task_id not in seen:
            seen.add(task_id)
            keep.append(index)
    return keep
