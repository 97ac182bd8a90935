<?php

declare(strict_types=1);

namespace Conveyor\Exception;

/** A task message body that is not valid (docs/protocol.md §2): dead-lettered with this message. */
final class InvalidMessage extends ConveyorException
{
}
