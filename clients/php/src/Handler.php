<?php

declare(strict_types=1);

namespace Conveyor;

/**
 * A task handler as a class: `$worker->register('invoice.send', SendInvoice::class)`. A plain
 * callable `fn (array $params, TaskContext $task): mixed` works as well. The return value (any
 * JSON) is the task's result; throw Retry or Abort to steer the worker, anything else fails the
 * attempt (retried while attempts remain).
 */
interface Handler
{
    /** @param array<string, mixed> $params */
    public function handle(array $params, TaskContext $task): mixed;
}
