-- Flow control (docs/flow-control.md): unique tasks, rate and concurrency limits, workflows and
-- routing. Nothing here touches an ordinary task: its ``flow`` is NULL, so it has no entry in
-- the partial index below, and the other tables only ever hold flow-controlled tasks.

-- Everything flow control needs to know about a task, as one optional JSON object (unique key,
-- workflow step, routing pin or shard). NULL for an ordinary task.
ALTER TABLE tasks ADD COLUMN flow jsonb;

-- Unique tasks: at most one task per unique key while it is waiting or running. A finished task
-- leaves the index's predicate, so its key is free again; ordinary tasks never enter it.
CREATE UNIQUE INDEX tasks_unique_active ON tasks ((flow->>'unique_key'))
    WHERE (flow->>'unique_key') IS NOT NULL AND status IN ('queued', 'scheduled', 'retrying', 'running');

-- Routing: tasks pinned to a node and not started yet, found when their node dies.
CREATE INDEX tasks_pinned_waiting ON tasks ((flow->>'node'))
    WHERE (flow->>'node') IS NOT NULL AND status IN ('queued', 'scheduled', 'retrying');

-- Limits as configured: declared by a task type in code (source 'code', written when a worker
-- starts) or set by an operator (source 'manual', which code never overwrites).
CREATE TABLE flow_limits (
    name        text NOT NULL,              -- the task type
    kind        text NOT NULL,              -- 'rate' | 'concurrency'
    rate_per_s  double precision,           -- rate: tasks started per second
    burst       integer,                    -- rate: how many may start at once
    max_running integer,                    -- concurrency: tasks running at once
    key_param   text,                       -- the param whose value keys the limit; NULL: one per type
    source      text NOT NULL,
    updated_at  double precision NOT NULL,
    PRIMARY KEY (name, kind)
);

-- One row per (kind, limit, key) in use: the row a claim locks (so claims of one key queue up),
-- and for a rate limit its state (GCRA: the theoretical arrival time of the next task).
CREATE TABLE flow_buckets (
    kind text NOT NULL,
    name text NOT NULL,
    key  text NOT NULL,
    tat  double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, name, key)
);

-- Concurrency slots: held by a running task (valid while its lease is) or reserved for a
-- parked task just released (valid until reserved_until).
CREATE TABLE flow_slots (
    name           text NOT NULL,
    key            text NOT NULL,
    task_id        uuid NOT NULL,
    reserved_until double precision,
    PRIMARY KEY (name, key, task_id)
);
CREATE INDEX flow_slots_task ON flow_slots (task_id);

-- Tasks over a concurrency limit, waiting in the store (their delivery acked) until a slot frees.
CREATE TABLE flow_parked (
    name    text NOT NULL,
    key     text NOT NULL,
    task_id uuid NOT NULL,
    at      double precision NOT NULL,
    PRIMARY KEY (name, key, task_id)
);
CREATE INDEX flow_parked_order ON flow_parked (name, key, at);

-- Rate limits: the start time a deferred task reserved.
CREATE TABLE flow_reserved (
    task_id uuid NOT NULL,
    name    text NOT NULL,
    key     text NOT NULL,
    at      double precision NOT NULL,
    PRIMARY KEY (task_id, name, key)
);

-- Workflows: the graph of steps, each step's state before its task exists, and the edges.
CREATE TABLE flow_workflows (
    id           uuid PRIMARY KEY,            -- UUIDv7: sorts by creation
    name         text NOT NULL,
    state        text NOT NULL,               -- 'running' | 'cancelled'
    result       text NOT NULL,               -- JSON: which steps make the workflow's result
    created_at   double precision NOT NULL,
    cancelled_at double precision
);

CREATE TABLE flow_steps (
    workflow_id uuid NOT NULL,
    name        text NOT NULL,
    task_id     uuid NOT NULL,                -- chosen at submit; the task exists once released
    state       text NOT NULL,                -- waiting | released | skipped | failed | cancelled
    pending     integer NOT NULL,             -- parents that have not succeeded yet
    spec        text NOT NULL,                -- JSON: type, params, options, parents, policy
    detail      text,
    PRIMARY KEY (workflow_id, name)
);
CREATE INDEX flow_steps_waiting ON flow_steps (workflow_id) WHERE state = 'waiting';

CREATE TABLE flow_edges (
    workflow_id uuid NOT NULL,
    parent      text NOT NULL,
    child       text NOT NULL,
    PRIMARY KEY (workflow_id, parent, child)
);
