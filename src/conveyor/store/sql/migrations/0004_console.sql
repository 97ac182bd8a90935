-- The console (issue 10): statistics tables and the one index the overview needs.
-- Search and keyset paging reuse the (column, id) indexes of 0001 (a search is planned for its
-- own values, so a rare queue or status finds its index); see docs/console.md for what the index
-- costs the worker's status changes (bench/console_bench.py measures it).

-- Task types usually belong to one queue: without this the planner multiplies their
-- frequencies as if independent and misjudges a "type and queue" filter. Costs only ANALYZE.
CREATE STATISTICS tasks_status_type_queue (dependencies, mcv) ON status, type, queue FROM tasks;

-- The oldest waiting task per queue, without walking the queue's finished tasks. Partial: only
-- a status change INTO 'queued' adds an entry, so it costs the hot path little.
CREATE INDEX tasks_queued_by_queue ON tasks (queue, queued_at) WHERE status = 'queued';

-- The statistics fold reads the events after its watermark, in seq order (0003 made the key
-- (task_id, seq), which cannot find them). An insert at the right edge of a b-tree is its
-- cheapest kind; bench/console_bench.py measures what it costs the worker's status changes.
CREATE INDEX task_events_seq ON task_events (seq);

-- Statistics folded from task_events by conveyor.stats (see src/conveyor/stats/store.py).
CREATE TABLE stats_state (
    name  text PRIMARY KEY,
    value double precision NOT NULL
);
CREATE TABLE stats_counts (
    queue  text NOT NULL,
    status text NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (queue, status)
);
CREATE TABLE stats_totals (
    queue text NOT NULL,
    type  text NOT NULL,
    name  text NOT NULL,
    n     double precision NOT NULL,
    PRIMARY KEY (queue, type, name)
);
CREATE TABLE stats_buckets (
    queue  text NOT NULL,
    type   text NOT NULL,
    name   text NOT NULL,
    bucket integer NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (queue, type, name, bucket)
);
CREATE TABLE stats_minutes (
    minute bigint NOT NULL,
    queue  text NOT NULL,
    name   text NOT NULL,
    n      double precision NOT NULL,
    PRIMARY KEY (minute, queue, name)
);
CREATE TABLE stats_nodes (
    node text NOT NULL,
    name text NOT NULL,
    n    bigint NOT NULL,
    PRIMARY KEY (node, name)
);
