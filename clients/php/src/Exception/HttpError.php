<?php

declare(strict_types=1);

namespace Conveyor\Exception;

/** The HTTP API answered with an error: `{"error": {"type", "message", "fields"}}`. */
class HttpError extends ConveyorException
{
    /** @param list<string> $fields */
    public function __construct(
        string $message,
        public readonly int $status,
        public readonly string $type = 'http',
        public readonly array $fields = [],
    ) {
        parent::__construct($message, $status);
    }
}
