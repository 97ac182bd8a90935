<?php

declare(strict_types=1);

namespace Conveyor\Tests\Unit;

use Conveyor\Exception\InvalidMessage;
use Conveyor\TaskMessage;
use Conveyor\Uuid;
use PHPUnit\Framework\TestCase;

/** The decoder agrees with the conformance kit's messages (protocol/conformance/messages.json). */
final class TaskMessageTest extends TestCase
{
    /** @return iterable<string, array{array<string, mixed>}> */
    public static function kitMessages(): iterable
    {
        $kit = json_decode((string) file_get_contents(CONVEYOR_KIT . '/messages.json'), true, 512, JSON_THROW_ON_ERROR);
        foreach ($kit['cases'] as $case) {
            yield $case['name'] => [$case];
        }
    }

    /**
     * @dataProvider kitMessages
     * @param array<string, mixed> $case
     */
    public function testEveryKitMessageDecodesOrIsRefusedWithItsReason(array $case): void
    {
        $body = self::body($case, Uuid::v7());
        $expect = $case['expect'];
        $refused = $expect['outcome'] === 'dead_letter' && !str_contains($expect['reason'], 'unknown task type');
        if (!$refused) {
            $message = TaskMessage::fromBody($body);
            self::assertSame($message->encode(), TaskMessage::fromBody($message->encode())->encode());
            return;
        }
        try {
            TaskMessage::fromBody($body);
            self::fail('decoded a message the kit says is invalid');
        } catch (InvalidMessage $e) {
            self::assertStringContainsStringIgnoringCase($expect['reason'], $e->getMessage());
        }
    }

    public function testParamsAndTraceAreSentAsObjectsEvenWhenEmpty(): void
    {
        $message = new TaskMessage(Uuid::v7(), 't', [], 'q');
        self::assertStringContainsString('"params":{}', $message->encode());
        self::assertStringContainsString('"trace":{}', $message->encode());
    }

    public function testAnEmptyListAsParamsIsRefused(): void
    {
        $this->expectException(InvalidMessage::class);
        $this->expectExceptionMessage('params must be a JSON object');
        TaskMessage::fromBody('{"protocol": 1, "id": "' . Uuid::v7() . '", "type": "t", "params": [], "queue": "q"}');
    }

    /** @param array<string, mixed> $case */
    private static function body(array $case, string $id): string
    {
        if (isset($case['raw'])) {
            return str_replace('@id', $id, $case['raw']);
        }
        $message = $case['message'];
        array_walk_recursive($message, static function (mixed &$value) use ($id): void {
            $value = $value === '@id' ? $id : $value;
        });
        return json_encode(self::objects($message, $case['message']), JSON_THROW_ON_ERROR | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION);
    }

    /** Empty objects of the fixture stay objects when re-encoded. */
    private static function objects(mixed $value, mixed $original): mixed
    {
        if (is_array($value)) {
            if ($value === []) {
                return new \stdClass();
            }
            foreach ($value as $key => $item) {
                $value[$key] = self::objects($item, $original[$key] ?? null);
            }
        }
        return $value;
    }
}
