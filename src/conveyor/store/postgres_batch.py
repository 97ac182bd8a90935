"""Set-based statements for the worker's hot writes: claiming attempts, recording outcomes and
renewing leases, each ONE statement over arrays (``unnest``) for a whole batch, so the
per-statement cost of the driver and the server is paid once per batch rather than once per
task. Each row is still a fenced compare-and-set with its event, and every time comes from the
server's clock (``clock_timestamp()``), never the worker's."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from conveyor.model import Task
from conveyor.store.base import CLAIM_EARLY_SLACK_S, Outcome

CLOCK = "extract(epoch FROM clock_timestamp())::float8"
# Planner methods turned off for these statements: their plans are generic (planned once,
# whatever the batch), and a generic plan cannot know a batch is a handful of ids; with the
# table's statistics of the moment it may prefer scanning every queued or running task. Off,
# every plan looks tasks up by primary key.
BY_KEY = ("enable_seqscan", "enable_bitmapscan", "enable_hashjoin", "enable_mergejoin")


def _claim_ctes(returned: str, event_cols: str) -> str:
    """Claims of (``c_ids``, ``c_attempts``) by ``node``: CTEs ``cold``, ``cu`` (returns
    ``returned``), ``ce``; needs the clock CTE ``c``."""
    return f"""cd AS (SELECT * FROM unnest(%(c_ids)s::uuid[], %(c_attempts)s::int[]) AS d(id, attempt)),
cold AS (
    SELECT t.id, t.status, cd.attempt, c.now FROM tasks t JOIN cd ON t.id = cd.id CROSS JOIN c
    -- Conditions as expressions no index matches (``|| ''``, ``coalesce``): with a generic plan
    -- the planner cannot know the batch is small and would otherwise scan every queued task.
    WHERE t.attempts < cd.attempt
      AND (t.status || '' = 'queued'
           OR (t.status || '' IN ('scheduled', 'retrying')
               AND coalesce(t.eta, 0) <= c.now + {CLAIM_EARLY_SLACK_S}))
    FOR UPDATE OF t
), cu AS (
    UPDATE tasks t SET status = 'running', node = %(node)s, attempts = cold.attempt, started_at = cold.now,
        lease_until = cold.now + %(lease_s)s, finished_at = NULL, queued_at = coalesce(t.queued_at, cold.now),
        version = t.version + 1
    FROM cold WHERE t.id = cold.id
    RETURNING {returned}, cold.status AS from_status, cold.now AS ev_at
), ce AS (
    INSERT INTO task_events ({event_cols})
    SELECT id, from_status, 'running', ev_at, node, 'attempt ' || attempts FROM cu
)"""


def _outcome_ctes(returned: str, event_cols: str) -> str:
    """Fenced outcomes of ``node`` (``f_*`` arrays): CTEs ``fd``, ``fu`` (returns ``returned``),
    ``fe``, ``fo``; needs the clock CTE ``c``."""
    return f"""fd AS (
    SELECT * FROM unnest(%(f_ids)s::uuid[], %(f_attempts)s::int[], %(f_statuses)s::text[], %(f_results)s::jsonb[],
                         %(f_errors)s::jsonb[], %(f_delays)s::float8[], %(f_details)s::text[], %(f_publish)s::bool[])
        AS d(id, attempt, status, result, error, delay, detail, publish)
), fu AS (
    UPDATE tasks t SET status = fd.status,
        result = CASE WHEN fd.status = 'queued' THEN t.result ELSE fd.result END,
        error = CASE WHEN fd.status = 'queued' THEN t.error ELSE fd.error END,
        finished_at = CASE WHEN fd.status IN ('succeeded', 'failed') THEN c.now END,
        eta = CASE WHEN fd.status = 'retrying' THEN c.now + fd.delay WHEN fd.status = 'queued' THEN NULL
                   ELSE t.eta END,
        attempts = CASE WHEN fd.status = 'queued' THEN t.attempts - 1 ELSE t.attempts END,
        queued_at = CASE WHEN fd.status = 'queued' THEN c.now ELSE t.queued_at END,
        lease_until = NULL, version = t.version + 1
    FROM fd CROSS JOIN c
    -- The fence as expressions no index matches: the plan must look tasks up by id, never scan
    -- every running task (a generic plan cannot know the batch is small).
    WHERE t.id = fd.id AND t.status || '' = 'running' AND t.attempts = fd.attempt AND t.node || '' = %(node)s
    RETURNING {returned}, fd.detail AS ev_detail, fd.publish AS ev_publish, c.now AS ev_at
), fe AS (
    INSERT INTO task_events ({event_cols})
    SELECT id, 'running', status, ev_at, node, ev_detail FROM fu
), fo AS (
    INSERT INTO task_outbox (task_id, version, at)
    SELECT id, version, ev_at FROM fu WHERE ev_publish
    ON CONFLICT (task_id) DO UPDATE SET version = EXCLUDED.version, at = EXCLUDED.at
)"""


def claims_sql(fields: Sequence[str], cols: str, event_cols: str) -> str:
    returned = ", ".join("t." + c for c in fields)
    return f"WITH c AS (SELECT {CLOCK} AS now),\n{_claim_ctes(returned, event_cols)}\nSELECT {cols} FROM cu"


def outcomes_sql(fields: Sequence[str], cols: str, event_cols: str) -> str:
    returned = ", ".join("t." + c for c in fields)
    return f"WITH c AS (SELECT {CLOCK} AS now),\n{_outcome_ctes(returned, event_cols)}\nSELECT {cols} FROM fu"


def cycle_sql(event_cols: str) -> str:
    """The worker's one statement per cycle: record the outcomes that finished, claim the
    deliveries that arrived, in one transaction. Returns (kind 'f' or 'c', id, status, version,
    eta): the worker already holds the rest of each task (from its message)."""
    keys = "t.id, t.status, t.version, t.eta, t.node, t.attempts"
    return f"""WITH c AS (SELECT {CLOCK} AS now),
{_outcome_ctes(keys, event_cols)},
{_claim_ctes(keys, event_cols)}
SELECT 'f', id, status, version, eta FROM fu UNION ALL SELECT 'c', id, status, version, eta FROM cu"""


RENEW_SQL = f"""
WITH c AS (SELECT {CLOCK} AS now)
UPDATE tasks t SET lease_until = c.now + %(lease_s)s, version = t.version + 1
FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS d(id, attempt), c
WHERE t.id = d.id AND t.attempts = d.attempt AND t.node || '' = %(node)s AND t.status || '' = 'running'
RETURNING t.id
"""


def claims_params(claims: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> dict[str, Any]:
    return {"c_ids": [c[0] for c in claims], "c_attempts": [c[1] for c in claims], "node": node, "lease_s": lease_s}


def outcomes_params(outcomes: Sequence[Outcome], node: str) -> dict[str, Any]:
    return {
        "f_ids": [o.task_id for o in outcomes], "f_attempts": [o.attempt for o in outcomes],
        "f_statuses": [o.status.value for o in outcomes], "f_results": [o.result for o in outcomes],
        "f_errors": [o.error for o in outcomes], "f_delays": [o.retry_in_s for o in outcomes],
        "f_details": [o.detail for o in outcomes], "f_publish": [o.publish for o in outcomes], "node": node,
    }


def cycle_params(outcomes: Sequence[Outcome], claims: Sequence[tuple[uuid.UUID, int]], node: str,
                 lease_s: float) -> dict[str, Any]:
    return {**outcomes_params(outcomes, node), **claims_params(claims, node, lease_s)}


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


def in_order(ids: Sequence[uuid.UUID], keep: Sequence[int], written: Iterable[Task]) -> list[Task | None]:
    """The tasks a batch wrote for the ``keep`` indexes, back in the order of ``ids``: None for a
    repeated id and for a write that did not apply."""
    by_id = {t.id: t for t in written}
    kept = set(keep)
    return [by_id.get(task_id) if i in kept else None for i, task_id in enumerate(ids)]
