"""Set-based statements for the worker's hot writes: claiming attempts, recording outcomes and
renewing leases, each ONE statement over arrays (``unnest``) for a whole batch, so the
per-statement cost of the driver and the server is paid once per batch rather than once per
task. Each row is still a fenced compare-and-set with its event, and every time comes from the
server's clock (``clock_timestamp()``), never the worker's."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from conveyor.store.base import CLAIM_EARLY_SLACK_S, Outcome

CLOCK = "extract(epoch FROM clock_timestamp())::float8"


def claims_sql(fields: Sequence[str], cols: str, event_cols: str) -> str:
    returned = ", ".join("t." + c for c in fields)
    return f"""
WITH c AS (SELECT {CLOCK} AS now),
d AS (SELECT * FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS d(id, attempt)),
old AS (
    SELECT t.id, t.status, d.attempt, c.now FROM tasks t JOIN d ON t.id = d.id CROSS JOIN c
    WHERE t.attempts < d.attempt
      AND (t.status = 'queued'
           OR (t.status IN ('scheduled', 'retrying') AND (t.eta IS NULL OR t.eta <= c.now + {CLAIM_EARLY_SLACK_S})))
    FOR UPDATE OF t
), u AS (
    UPDATE tasks t SET status = 'running', node = %(node)s, attempts = old.attempt, started_at = old.now,
        lease_until = old.now + %(lease_s)s, finished_at = NULL, queued_at = coalesce(t.queued_at, old.now),
        version = t.version + 1
    FROM old WHERE t.id = old.id
    RETURNING {returned}, old.status AS from_status, old.now AS ev_at
), e AS (
    INSERT INTO task_events ({event_cols})
    SELECT id, from_status, 'running', ev_at, node, 'attempt ' || attempts FROM u
)
SELECT {cols} FROM u
"""


def outcomes_sql(fields: Sequence[str], cols: str, event_cols: str) -> str:
    returned = ", ".join("t." + c for c in fields)
    return f"""
WITH c AS (SELECT {CLOCK} AS now),
d AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(attempts)s::int[], %(statuses)s::text[], %(results)s::jsonb[],
                         %(errors)s::jsonb[], %(delays)s::float8[], %(details)s::text[], %(publish)s::bool[])
        AS d(id, attempt, status, result, error, delay, detail, publish)
), u AS (
    UPDATE tasks t SET status = d.status,
        result = CASE WHEN d.status = 'queued' THEN t.result ELSE d.result END,
        error = CASE WHEN d.status = 'queued' THEN t.error ELSE d.error END,
        finished_at = CASE WHEN d.status IN ('succeeded', 'failed') THEN c.now END,
        eta = CASE WHEN d.status = 'retrying' THEN c.now + d.delay WHEN d.status = 'queued' THEN NULL
                   ELSE t.eta END,
        attempts = CASE WHEN d.status = 'queued' THEN t.attempts - 1 ELSE t.attempts END,
        queued_at = CASE WHEN d.status = 'queued' THEN c.now ELSE t.queued_at END,
        lease_until = NULL, version = t.version + 1
    FROM d CROSS JOIN c
    WHERE t.id = d.id AND t.status = 'running' AND t.attempts = d.attempt AND t.node = %(node)s
    RETURNING {returned}, d.detail AS ev_detail, d.publish AS ev_publish, c.now AS ev_at
), e AS (
    INSERT INTO task_events ({event_cols})
    SELECT id, 'running', status, ev_at, node, ev_detail FROM u
), o AS (
    INSERT INTO task_outbox (task_id, version, at)
    SELECT id, version, ev_at FROM u WHERE ev_publish
    ON CONFLICT (task_id) DO UPDATE SET version = EXCLUDED.version, at = EXCLUDED.at
)
SELECT {cols} FROM u
"""


RENEW_SQL = f"""
WITH c AS (SELECT {CLOCK} AS now)
UPDATE tasks t SET lease_until = c.now + %(lease_s)s, version = t.version + 1
FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS d(id, attempt), c
WHERE t.id = d.id AND t.attempts = d.attempt AND t.node = %(node)s AND t.status = 'running'
RETURNING t.id
"""


def jsonb_or_null(value: Any) -> Jsonb | None:
    """A JSON column value: Python None is SQL NULL."""
    return None if value is None else Jsonb(value)


def claims_params(claims: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> dict[str, Any]:
    return {"ids": [c[0] for c in claims], "attempts": [c[1] for c in claims], "node": node, "lease_s": lease_s}


def outcomes_params(outcomes: Sequence[Outcome], node: str) -> dict[str, Any]:
    return {
        "ids": [o.task_id for o in outcomes], "attempts": [o.attempt for o in outcomes],
        "statuses": [o.status.value for o in outcomes], "results": [jsonb_or_null(o.result) for o in outcomes],
        "errors": [jsonb_or_null(o.error) for o in outcomes], "delays": [o.retry_in_s for o in outcomes],
        "details": [o.detail for o in outcomes], "publish": [o.publish for o in outcomes], "node": node,
    }


def renew_params(leases: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> dict[str, Any]:
    return {"ids": [lease[0] for lease in leases], "attempts": [lease[1] for lease in leases], "node": node,
            "lease_s": lease_s}


def first_of_each_id(ids: Sequence[uuid.UUID]) -> list[int]:
    """Indexes of the first occurrence of each id: a batch must not write one task twice."""
    seen: set[uuid.UUID] = set()
    keep = []
    for index, task_id in enumerate(ids):
        if task_id not in seen:
            seen.add(task_id)
            keep.append(index)
    return keep
