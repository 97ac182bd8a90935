<?php

declare(strict_types=1);

/*
 * The conformance handlers (protocol/conformance/README.md) for the PHP worker:
 * `php tests/conformance/worker.php`, configured by CONVEYOR_BROKER_URL and CONVEYOR_QUEUES.
 * Each handler first appends its run to the file named by CONVEYOR_CONFORMANCE_LOG.
 */

use Conveyor\Exception\Abort;
use Conveyor\Exception\Retry;
use Conveyor\TaskContext;
use Conveyor\Worker;

require __DIR__ . '/../../src/autoload.php';

function record(TaskContext $task): void
{
    $line = sprintf("%s\t%s\t%d\t%s\t%d\t%.6f\n", $task->id, $task->type, $task->attempt, $task->node, getmypid(), microtime(true));
    file_put_contents((string) getenv('CONVEYOR_CONFORMANCE_LOG'), $line, FILE_APPEND | LOCK_EX);
}

$worker = (new Worker())
    ->register('conformance.echo', function (array $params, TaskContext $task): object {
        record($task);
        return (object) $params; // an object even when empty: PHP's [] would be sent as a list
    })
    ->register('conformance.add', function (array $params, TaskContext $task): int|float {
        record($task);
        return $params['a'] + $params['b'];
    })
    ->register('conformance.fail', function (array $params, TaskContext $task): never {
        record($task);
        throw new RuntimeException((string) $params['message']);
    })
    ->register('conformance.retry', function (array $params, TaskContext $task): string {
        record($task);
        if ($task->attempt === 1) {
            throw new Retry((float) $params['delay_s']);
        }
        return 'second try';
    })
    ->register('conformance.abort', function (array $params, TaskContext $task): never {
        record($task);
        throw new Abort('aborted on purpose');
    })
    ->register('conformance.sleep', function (array $params, TaskContext $task): void {
        record($task);
        usleep((int) ($params['seconds'] * 1e6));
    });

exit($worker->run(['concurrency' => (int) (getenv('CONVEYOR_CONCURRENCY') ?: 2)]));
