<?php

declare(strict_types=1);

namespace Conveyor\Tests\Unit;

use Conveyor\Exception\Abort;
use Conveyor\Exception\Retry;
use Conveyor\TaskContext;
use Conveyor\Worker\Execution;
use Conveyor\Worker\Outcome;
use PHPUnit\Framework\TestCase;

/** A handler runs in a child process; whatever it does, the worker gets one outcome. */
final class ExecutionTest extends TestCase
{
    private static function runHandler(callable $handler, array $params = [], float $limit = 5.0): Outcome
    {
        $context = new TaskContext('0190c3e2-8f4a-7b21-9c3d-5e6f7a8b9c0d', 't', 2, 3, 'node-1', 'q');
        $run = Execution::start($handler, $params, $context);
        $deadline = microtime(true) + $limit;
        while (!$run->poll(0.05)) {
            if (microtime(true) > $deadline) {
                $run->kill();
                break;
            }
        }
        return $run->outcome();
    }

    public function testAResultComesBackAsJsonWithEmptyObjectsKept(): void
    {
        $outcome = self::runHandler(fn (array $p, TaskContext $t) => ['sum' => $p['a'] + $p['b'], 'attempt' => $t->attempt, 'o' => new \stdClass()],
            ['a' => 2, 'b' => 3]);
        self::assertSame(Outcome::SUCCEEDED, $outcome->kind);
        self::assertSame('{"sum":5,"attempt":2,"o":{}}', json_encode($outcome->result));
    }

    public function testAThrowCarriesItsClassMessageAndTraceback(): void
    {
        $outcome = self::runHandler(static function (): never {
            throw new \DomainException('no such invoice');
        });
        self::assertSame([Outcome::FAILED, 'DomainException', 'no such invoice', true],
            [$outcome->kind, $outcome->error['type'], $outcome->error['message'], $outcome->retry]);
        self::assertStringContainsString('ExecutionTest.php', (string) $outcome->error['traceback']);
    }

    public function testRetryAndAbortSteerTheOutcome(): void
    {
        $retry = self::runHandler(static fn () => throw new Retry(2.5));
        self::assertSame(['Retry', true, 2.5], [$retry->error['type'], $retry->retry, $retry->retryDelay]);
        $abort = self::runHandler(static fn () => throw new Abort('stop it'));
        self::assertSame(['Abort', false], [$abort->error['type'], $abort->retry]);
    }

    public function testAResultThatIsNotJsonFailsTheAttemptForGood(): void
    {
        $outcome = self::runHandler(static fn () => ['x' => NAN]);
        self::assertSame([Outcome::FAILED, false], [$outcome->kind, $outcome->retry]);
        self::assertStringContainsString('NaN', $outcome->error['message']);
    }

    public function testAHandlerThatExitsOrIsKilledStillGivesAnOutcome(): void
    {
        $exited = self::runHandler(static function (): never {
            exit(3);
        });
        self::assertSame([Outcome::FAILED, 'Exit'], [$exited->kind, $exited->error['type']]);
        $started = microtime(true);
        $killed = self::runHandler(static fn () => sleep(30), [], 0.3);
        self::assertLessThan(5.0, microtime(true) - $started);
        self::assertSame('WorkerLost', $killed->error['type']);
        self::assertStringContainsString('signal 9', $killed->error['message']);
    }
}
