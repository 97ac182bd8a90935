<?php

declare(strict_types=1);

namespace Conveyor\Exception;

/** Input refused: by this client before sending, or by the server (HTTP 422). */
class ValidationFailed extends ConveyorException
{
    /** @param list<string> $fields the fields at fault */
    public function __construct(string $message, public readonly array $fields = [], ?\Throwable $previous = null)
    {
        parent::__construct($message, 422, $previous);
    }
}
