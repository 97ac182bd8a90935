<?php

declare(strict_types=1);

namespace Conveyor\Exception;

/** The task ended failed or cancelled; `error` holds the recorded error (type, message, traceback). */
final class TaskFailed extends ConveyorException
{
    /** @param array<string, mixed>|null $error */
    public function __construct(public readonly string $taskId, public readonly string $status, public readonly ?array $error)
    {
        $text = is_array($error) && is_string($error['message'] ?? null) && $error['message'] !== '' ? $error['message'] : $status;
        parent::__construct("task {$taskId} {$status}: {$text}");
    }
}
