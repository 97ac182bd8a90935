-- Hot path v2 (docs/architecture.md): the outbox, and fewer index entries per status change.

-- A task whose message is still to be published. Written in the same transaction as the task
-- change that needs the message (submit, retry, take-over, manual retry); deleted once the
-- broker confirmed it. ``version`` is the task version the message is for, so a publisher of an
-- older version never removes the intent of a newer one. The reconciler republishes intents
-- older than a grace period (a publisher died between the commit and the confirm).
CREATE TABLE task_outbox (
    task_id uuid PRIMARY KEY,
    version integer NOT NULL,
    at      double precision NOT NULL
);

-- Most tasks have no idempotency key: a partial unique index keeps their NULLs out of it (every
-- status change that is not a HOT update writes an entry in every index of the row).
ALTER TABLE tasks DROP CONSTRAINT tasks_idempotency_key_key;
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;

-- A task's timeline is read by task: one index serves as the primary key and the lookup.
ALTER TABLE task_events DROP CONSTRAINT task_events_pkey;
DROP INDEX task_events_task_seq;
ALTER TABLE task_events ADD PRIMARY KEY (task_id, seq);

-- Events are written twice per attempt; checking a foreign key on each costs about as much as
-- the insert itself. Deleting a task deletes its events explicitly (retention) instead.
ALTER TABLE task_events DROP CONSTRAINT task_events_task_id_fkey;
