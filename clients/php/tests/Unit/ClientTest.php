<?php

declare(strict_types=1);

namespace Conveyor\Tests\Unit;

use Conveyor\Amqp\Topology;
use Conveyor\Client;
use Conveyor\Exception\Unavailable;
use Conveyor\Exception\ValidationFailed;
use Conveyor\Json;
use PHPUnit\Framework\TestCase;

/** What the client refuses before sending anything, and the wire details it must get right. */
final class ClientTest extends TestCase
{
    public function testParamsAreAlwaysAJsonObject(): void
    {
        self::assertSame('{}', Json::encode(Json::params([])));
        self::assertSame('{"a":1}', Json::encode(Json::params(['a' => 1])));
        self::assertSame('{"a":[]}', Json::encode(Json::params(['a' => []])));
        $this->expectException(ValidationFailed::class);
        Json::params([1, 2]);
    }

    /** @return iterable<string, array{array<string, mixed>, string}> */
    public static function badSubmits(): iterable
    {
        yield 'blank type' => [['type' => ' '], 'type'];
        yield 'NUL in type' => [['type' => "a\0b"], 'type'];
        yield 'NaN in params' => [['type' => 't', 'params' => ['x' => NAN]], 'params'];
        yield 'INF deep in params' => [['type' => 't', 'params' => ['x' => [['y' => INF]]]], 'params'];
        yield 'NUL in params' => [['type' => 't', 'params' => ['x' => "a\0"]], 'params'];
        yield 'a list as params' => [['type' => 't', 'params' => [1]], 'params'];
        yield 'reserved queue' => [['type' => 't', 'queue' => '_reports'], 'queue'];
        yield 'queue with a newline' => [['type' => 't', 'queue' => "q\n"], 'queue'];
        yield 'priority 10' => [['type' => 't', 'priority' => 10], 'priority'];
        yield 'priority as a string' => [['type' => 't', 'priority' => '5'], 'priority'];
        yield 'timeout 1e10' => [['type' => 't', 'timeout' => 1e10], 'timeout'];
        yield 'timeout 0' => [['type' => 't', 'timeout' => 0], 'timeout'];
        yield 'max_attempts 0' => [['type' => 't', 'max_attempts' => 0], 'max_attempts'];
        yield 'negative delay' => [['type' => 't', 'delay' => -1], 'delay'];
        yield 'eta without a zone' => [['type' => 't', 'eta' => '2030-01-01T00:00:00'], 'eta'];
        yield 'unknown option' => [['type' => 't', 'retries' => 3], 'retries'];
    }

    /**
     * @dataProvider badSubmits
     * @param array<string, mixed> $task
     */
    public function testInvalidSubmitsAreRefusedBeforeAnythingIsSent(array $task, string $field): void
    {
        $client = Client::http('http://127.0.0.1:9'); // nothing listens there: refusing must not need it
        try {
            $client->submitMany([$task]);
            self::fail('submitted an invalid task');
        } catch (ValidationFailed $e) {
            self::assertContains($field, $e->fields, $e->getMessage());
        }
    }

    public function testAnUnreachableServerIsUnavailable(): void
    {
        $this->expectException(Unavailable::class);
        Client::http('http://127.0.0.1:9')->submit('t', ['x' => 1]);
    }

    public function testDelaysRoundUpLikeConveyorsSoDelayQueuesAreShared(): void
    {
        self::assertSame(0, Topology::delayMs(0));
        self::assertSame(100, Topology::delayMs(0.01));
        self::assertSame(300, Topology::delayMs(0.3));
        self::assertSame(1000, Topology::delayMs(0.95));
        self::assertSame(2000, Topology::delayMs(1.2));
        self::assertSame(7 * 24 * 3600 * 1000, Topology::delayMs(400 * 24 * 3600));
    }

    public function testQueuesAreDeclaredWithConveyorsArguments(): void
    {
        self::assertSame(['x-max-priority' => 10], (new Topology())->queueArguments());
        self::assertSame(['x-queue-type' => 'quorum'], (new Topology('conveyor', 'quorum'))->queueArguments());
        self::assertSame('ns.emails', (new Topology('ns'))->queueName('emails'));
    }
}
