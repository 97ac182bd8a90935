<?php

declare(strict_types=1);

/*
 * The PHP worker of the PHP end-to-end tests (bin/conveyor-worker tests/php/apps/worker.php).
 * Every handler appends its run to CONVEYOR_TEST_EXEC_LOG (the format of tests/execlog.py).
 */

use Conveyor\TaskContext;
use Conveyor\Worker;

function record_run(TaskContext $task): void
{
    $path = getenv('CONVEYOR_TEST_EXEC_LOG');
    if ($path) {
        file_put_contents($path, sprintf("%s\t%s\t%d\t%s\t%d\t%.6f\n", $task->id, $task->type, $task->attempt,
            $task->node, getmypid(), microtime(true)), FILE_APPEND | LOCK_EX);
    }
}

final class InvoiceRenderer implements Conveyor\Handler
{
    public function handle(array $params, TaskContext $task): mixed
    {
        record_run($task);
        return ['invoice' => $params['number'], 'pages' => 2, 'rendered_by' => 'php'];
    }
}

return (new Worker())
    ->register('php.add', function (array $params, TaskContext $task): array {
        record_run($task);
        return ['sum' => $params['a'] + $params['b'], 'attempt' => $task->attempt];
    })
    ->register('php.invoice', InvoiceRenderer::class)
    ->register('php.flaky', function (array $params, TaskContext $task): never {
        record_run($task);
        throw new DomainException("invoice {$params['number']} cannot be rendered");
    })
    ->register('php.slow', function (array $params, TaskContext $task): array {
        record_run($task);
        usleep((int) ($params['seconds'] * 1e6));
        return ['slept' => $params['seconds'], 'attempt' => $task->attempt];
    })
    ->register('legacy.task', function (array $params, TaskContext $task): array {
        record_run($task);
        return ['done' => $params['body'] ?? $params];
    });
