<?php

declare(strict_types=1);

namespace Conveyor\Tests\Unit;

use Conveyor\Uuid;
use PHPUnit\Framework\TestCase;

final class UuidTest extends TestCase
{
    public function testV7HasTheVersionTheVariantAndTheTime(): void
    {
        $id = Uuid::v7(0x0190C3E28F4A);
        self::assertMatchesRegularExpression('/^0190c3e2-8f4a-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/', $id);
        self::assertTrue(Uuid::isValid($id));
    }

    public function testV7IdsSortByCreationTime(): void
    {
        $ids = [Uuid::v7(1_700_000_000_000), Uuid::v7(1_700_000_000_001), Uuid::v7(1_800_000_000_000)];
        $sorted = $ids;
        sort($sorted);
        self::assertSame($ids, $sorted);
        self::assertNotSame(Uuid::v7(5), Uuid::v7(5));
    }

    public function testANameAlwaysGivesTheSameId(): void
    {
        self::assertSame(Uuid::fromName('ns', 'order-42'), Uuid::fromName('ns', 'order-42'));
        self::assertNotSame(Uuid::fromName('ns', 'order-42'), Uuid::fromName('ns', 'order-43'));
        self::assertMatchesRegularExpression('/^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab]/', Uuid::fromName('ns', 'x'));
    }

    public function testATrailingNewlineIsNotAUuid(): void
    {
        self::assertFalse(Uuid::isValid("0190c3e2-8f4a-7b21-9c3d-5e6f7a8b9c0d\n"));
    }
}
