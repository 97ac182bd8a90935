<?php

declare(strict_types=1);

namespace Conveyor\Laravel;

use Conveyor\Exception\Abort;
use Conveyor\Exception\Retry;
use Conveyor\TaskContext;
use Illuminate\Container\Container;

/**
 * Runs a Laravel job payload as a Conveyor handler: `$this->release($s)` becomes Retry($s),
 * `$this->fail()` becomes Abort, an exception fails the attempt (Conveyor retries it while
 * attempts remain; on the last one the job's failed() method is called first).
 */
final class JobRunner
{
    public function __construct(private readonly Container $container, private readonly string $connectionName)
    {
    }

    /** @param array<string, mixed> $params */
    public function __invoke(array $params, TaskContext $task): mixed
    {
        $payload = $params['laravel'] ?? null;
        if (!is_array($payload) || !isset($payload['job'])) {
            throw new Abort("task {$task->id} of type {$task->type} carries no Laravel job payload");
        }
        $job = new ConveyorJob($this->container, $payload, $task, $this->connectionName);
        try {
            $job->fire();
        } catch (\Throwable $e) {
            if ($task->attempt >= $task->maxAttempts && !$job->hasFailed()) {
                $job->fail($e); // the job's failed() hook, as Laravel's own worker does
            }
            throw $e;
        }
        if ($job->hasFailed()) {
            throw new Abort("job {$job->resolveName()} marked itself failed");
        }
        if ($job->isReleased()) {
            throw new Retry((float) $job->releaseDelay(), "job {$job->resolveName()} released itself");
        }
        return ['job' => $job->resolveName()];
    }
}
