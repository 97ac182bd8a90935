<?php

declare(strict_types=1);

namespace Conveyor;

/** What a running handler may know about its task (Python: conveyor.current_task()). */
final class TaskContext
{
    public function __construct(
        public readonly string $id,
        public readonly string $type,
        public readonly int $attempt,
        public readonly int $maxAttempts,
        public readonly string $node,
        public readonly string $queue,
    ) {
    }
}
