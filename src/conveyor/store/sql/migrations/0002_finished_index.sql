-- Rates per queue (GET /api/v1/queues) count tasks finished in the last minute.
CREATE INDEX IF NOT EXISTS tasks_finished_at_idx ON tasks (finished_at) WHERE finished_at IS NOT NULL;
