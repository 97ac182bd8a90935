<?php

declare(strict_types=1);

namespace Conveyor;

/** Task ids: UUIDv7 (RFC 9562), so ids sort by creation time as Conveyor's own do. */
final class Uuid
{
    public const PATTERN = '/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/D';

    /** A new UUIDv7: 48 bits of Unix milliseconds, version 7, 74 random bits, variant 10. */
    public static function v7(?int $unixMs = null): string
    {
        $ms = $unixMs ?? (int) floor(microtime(true) * 1000);
        $time = substr(pack('J', $ms << 16), 0, 6);
        $rand = random_bytes(10);
        $rand[0] = chr((ord($rand[0]) & 0x0F) | 0x70);
        $rand[2] = chr((ord($rand[2]) & 0x3F) | 0x80);
        return self::format($time . $rand);
    }

    /**
     * A stable id for a name (UUIDv8, RFC 9562 §5.8, from SHA-256 of namespace and name): the
     * same idempotency key always gives the same task id.
     */
    public static function fromName(string $namespace, string $name): string
    {
        $hash = substr(hash('sha256', $namespace . "\0" . $name, true), 0, 16);
        $hash[6] = chr((ord($hash[6]) & 0x0F) | 0x80);
        $hash[8] = chr((ord($hash[8]) & 0x3F) | 0x80);
        return self::format($hash);
    }

    public static function isValid(string $text): bool
    {
        return preg_match(self::PATTERN, $text) === 1;
    }

    private static function format(string $sixteen): string
    {
        $hex = bin2hex($sixteen);
        return sprintf('%s-%s-%s-%s-%s', substr($hex, 0, 8), substr($hex, 8, 4), substr($hex, 12, 4),
            substr($hex, 16, 4), substr($hex, 20, 12));
    }
}
