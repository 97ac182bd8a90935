<?php

declare(strict_types=1);

namespace Conveyor;

use Conveyor\Exception\ValidationFailed;

/** JSON as the protocol wants it: UTF-8, no NaN or Infinity, params always an object. */
final class Json
{
    private const ENCODE = JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE
        | JSON_PRESERVE_ZERO_FRACTION;

    public static function encode(mixed $value): string
    {
        try {
            return json_encode($value, self::ENCODE);
        } catch (\JsonException $e) {
            throw new ValidationFailed('not JSON-serializable: ' . $e->getMessage(), [], $e);
        }
    }

    /**
     * Params for the wire: an associative array or object becomes a JSON object, and `[]` is `{}`
     * (json_encode would send a list). A non-empty list is refused: params are keyword arguments.
     *
     * @param array<mixed>|object $params
     */
    public static function params(array|object $params): object
    {
        if (is_array($params)) {
            if ($params !== [] && array_is_list($params)) {
                throw new ValidationFailed('params must be a JSON object (keyword arguments), not a list', ['params']);
            }
            return (object) $params;
        }
        return $params;
    }

    /** Decode a JSON document into arrays; throws \JsonException. */
    public static function decode(string $text): mixed
    {
        return json_decode($text, true, 512, JSON_THROW_ON_ERROR);
    }
}
