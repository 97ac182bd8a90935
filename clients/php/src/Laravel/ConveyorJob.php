<?php

declare(strict_types=1);

namespace Conveyor\Laravel;

use Conveyor\Json;
use Conveyor\TaskContext;
use Illuminate\Container\Container;
use Illuminate\Contracts\Queue\Job as JobContract;
use Illuminate\Queue\Jobs\Job;

/** One attempt of a Conveyor task carrying a Laravel job payload, as Laravel's Job. */
final class ConveyorJob extends Job implements JobContract
{
    private ?int $releaseDelay = null;

    /** @param array<string, mixed> $payload */
    public function __construct(Container $container, private readonly array $payload, private readonly TaskContext $task,
                                string $connectionName)
    {
        $this->container = $container;
        $this->connectionName = $connectionName;
        $this->queue = $task->queue;
    }

    public function getJobId()
    {
        return $this->task->id;
    }

    public function getRawBody()
    {
        return Json::encode($this->payload);
    }

    public function attempts()
    {
        return $this->task->attempt;
    }

    /** The delay the job asked for with release(). */
    public function releaseDelay(): int
    {
        return (int) ($this->releaseDelay ?? 0);
    }

    public function release($delay = 0)
    {
        parent::release($delay);
        $this->releaseDelay = (int) $delay;
    }
}
