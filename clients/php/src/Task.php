<?php

declare(strict_types=1);

namespace Conveyor;

/**
 * A task as the HTTP API returns it (`GET /api/v1/tasks/{id}`), field names as they are there:
 * `$task->status`, `$task->result`, `$task->error`, `$task->data['max_attempts']`, ...
 * `events` (the timeline, oldest first) is filled by Client::get().
 */
final class Task
{
    public const FINAL_STATUSES = ['succeeded', 'failed', 'cancelled'];

    public readonly string $id;
    public readonly string $type;
    public readonly string $status;
    public readonly int $attempts;
    public readonly mixed $result;
    /** @var array<string, mixed>|null */
    public readonly ?array $error;
    /** @var list<array<string, mixed>> */
    public readonly array $events;

    /** @param array<string, mixed> $data */
    public function __construct(public readonly array $data)
    {
        $this->id = (string) ($data['id'] ?? '');
        $this->type = (string) ($data['type'] ?? '');
        $this->status = (string) ($data['status'] ?? '');
        $this->attempts = (int) ($data['attempts'] ?? 0);
        $this->result = $data['result'] ?? null;
        $this->error = is_array($data['error'] ?? null) ? $data['error'] : null;
        $this->events = is_array($data['events'] ?? null) ? array_values($data['events']) : [];
    }

    public function isFinal(): bool
    {
        return in_array($this->status, self::FINAL_STATUSES, true);
    }
}
