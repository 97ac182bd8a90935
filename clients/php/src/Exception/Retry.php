<?php

declare(strict_types=1);

namespace Conveyor\Exception;

/** Throw from a handler to be run again after `delaySeconds` (null: the backoff). Counts as an attempt. */
final class Retry extends ConveyorException
{
    public function __construct(public readonly ?float $delaySeconds = null, string $message = 'retry requested')
    {
        parent::__construct($message);
    }
}
