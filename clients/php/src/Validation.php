<?php

declare(strict_types=1);

namespace Conveyor;

use Conveyor\Exception\ValidationFailed;

/**
 * The protocol's bounds (protocol/task-message.schema.json), the same numbers Conveyor's center
 * enforces at every entry point. Each check throws ValidationFailed naming the field.
 */
final class Validation
{
    public const MAX_TYPE_LENGTH = 200;
    public const MAX_NODE_LENGTH = 200;
    public const MAX_KEY_LENGTH = 200;
    public const MAX_PRIORITY = 9;
    public const MAX_ATTEMPTS = 10000;
    public const MAX_TIMEOUT_S = 366 * 86400.0;
    public const MAX_DELAY_S = 100 * 366 * 86400.0;
    public const QUEUE_PATTERN = '/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$/D';
    public const INSTANT_PATTERN = '/^(19[7-9][0-9]|[2-8][0-9]{3})-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$/D';

    public static function type(mixed $value): string
    {
        return self::text($value, 'type', self::MAX_TYPE_LENGTH);
    }

    public static function node(mixed $value): string
    {
        return self::text($value, 'node', self::MAX_NODE_LENGTH);
    }

    /** A non-blank string without NUL, valid UTF-8, at most $max characters. */
    public static function text(mixed $value, string $field, ?int $max = null): string
    {
        if (!is_string($value) || trim($value) === '') {
            throw new ValidationFailed("{$field} must be a non-empty string", [$field]);
        }
        if (!mb_check_encoding($value, 'UTF-8')) {
            throw new ValidationFailed("{$field} must be valid UTF-8 text", [$field]);
        }
        if ($max !== null && mb_strlen($value, 'UTF-8') > $max) {
            throw new ValidationFailed("{$field} must be at most {$max} characters", [$field]);
        }
        if (str_contains($value, "\0")) {
            throw new ValidationFailed("{$field} must not contain NUL characters", [$field]);
        }
        return $value;
    }

    public static function queue(mixed $value): string
    {
        if (!is_string($value) || preg_match(self::QUEUE_PATTERN, $value) !== 1) {
            throw new ValidationFailed("queue must be 1-200 letters, digits, '_', '.', ':' or '-', starting with a letter or digit", ['queue']);
        }
        return $value;
    }

    public static function int(mixed $value, string $field, int $low, int $high): int
    {
        // JSON Schema counts 2.0 as an integer (a number with no fraction), and so do we.
        if (is_float($value) && floor($value) === $value && $value >= $low && $value <= $high) {
            return (int) $value;
        }
        if (!is_int($value) || $value < $low || $value > $high) {
            throw new ValidationFailed("{$field} must be an integer from {$low} to {$high}", [$field]);
        }
        return $value;
    }

    public static function seconds(mixed $value, string $field, float $high, bool $positive): float
    {
        if (!is_int($value) && !is_float($value)) {
            throw new ValidationFailed("{$field} must be a number of seconds", [$field]);
        }
        $number = (float) $value;
        $lowOk = $positive ? $number > 0 : $number >= 0;
        if (!is_finite($number) || !$lowOk || $number > $high) {
            $bound = $positive ? '> 0' : '>= 0';
            throw new ValidationFailed("{$field} must be a number {$bound} and at most {$high} seconds", [$field]);
        }
        return $number;
    }

    /** An ISO-8601 instant with seconds and Z or an offset, a real calendar date, years 1970-8999. */
    public static function instant(mixed $value, string $field): string
    {
        $ok = is_string($value) && preg_match(self::INSTANT_PATTERN, $value) === 1
            && preg_match('/^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})/', $value, $m) === 1
            && checkdate((int) $m[2], (int) $m[3], (int) $m[1]) && (int) $m[4] < 24 && (int) $m[5] < 60
            && (int) $m[6] < 60;
        if (!$ok) {
            throw new ValidationFailed("{$field} must be an ISO-8601 UTC instant with Z or an offset", [$field]);
        }
        return $value;
    }

    /** Plain JSON a database can store: no NUL in strings or keys, finite numbers. */
    public static function json(mixed $value, string $field): void
    {
        if (is_float($value)) {
            if (!is_finite($value)) {
                throw new ValidationFailed("{$field} must not contain NaN or Infinity (not JSON)", [$field]);
            }
        } elseif (is_string($value)) {
            if (str_contains($value, "\0")) {
                throw new ValidationFailed("{$field} must not contain NUL characters in strings", [$field]);
            }
        } elseif (is_array($value) || $value instanceof \stdClass) {
            foreach ((array) $value as $key => $item) {
                if (is_string($key) && str_contains($key, "\0")) {
                    throw new ValidationFailed("{$field} must not contain NUL characters in strings", [$field]);
                }
                self::json($item, $field);
            }
        } elseif (!is_int($value) && !is_bool($value) && $value !== null && !$value instanceof \JsonSerializable) {
            throw new ValidationFailed("{$field} must be JSON; " . get_debug_type($value) . ' is not', [$field]);
        }
    }
}
