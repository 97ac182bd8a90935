-- Conveyor store schema, version 1.
-- Times are POSIX seconds (double precision, UTC), exactly as in conveyor.model, so rows map to
-- Task objects without conversion. Tables are created unqualified: the connection's search_path
-- picks the schema.

CREATE TABLE tasks (
    id              uuid PRIMARY KEY,          -- UUIDv7: sorts by creation time
    type            text NOT NULL,
    params          jsonb NOT NULL DEFAULT '{}',
    queue           text NOT NULL DEFAULT 'default',
    priority        smallint NOT NULL DEFAULT 0,
    status          text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 3,
    timeout         double precision,
    eta             double precision,
    idempotency_key text UNIQUE,               -- NULLs never conflict
    result          jsonb,
    error           jsonb,
    node            text,
    created_at      double precision NOT NULL,
    queued_at       double precision,
    started_at      double precision,
    finished_at     double precision,
    lease_until     double precision,
    crashes         integer NOT NULL DEFAULT 0,
    version         integer NOT NULL DEFAULT 0
);

-- Keyset paging, newest first, for each filter the API offers (ids order by creation).
CREATE INDEX tasks_status_id ON tasks (status, id DESC);
CREATE INDEX tasks_type_id ON tasks (type, id DESC);
CREATE INDEX tasks_queue_id ON tasks (queue, id DESC);
CREATE INDEX tasks_node_id ON tasks (node, id DESC);
-- The reaper's and the scheduler's scans only ever look at these few rows.
CREATE INDEX tasks_running_lease ON tasks (lease_until) WHERE status = 'running';
CREATE INDEX tasks_waiting_eta ON tasks (eta) WHERE status IN ('scheduled', 'retrying');

CREATE TABLE task_events (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- insertion order
    task_id     uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    from_status text,                                             -- NULL: creation
    to_status   text NOT NULL,
    at          double precision NOT NULL,
    node        text,
    detail      text
);

CREATE INDEX task_events_task_seq ON task_events (task_id, seq);

CREATE TABLE nodes (
    id             text PRIMARY KEY,
    host           text NOT NULL,
    pid            integer NOT NULL,
    queues         text[] NOT NULL,
    concurrency    integer NOT NULL,
    started_at     double precision NOT NULL,
    last_heartbeat double precision NOT NULL,
    status         text NOT NULL,
    in_flight      integer NOT NULL DEFAULT 0,
    done           bigint NOT NULL DEFAULT 0
);
