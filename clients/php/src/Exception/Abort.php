<?php

declare(strict_types=1);

namespace Conveyor\Exception;

/** Throw from a handler to fail the task now, with no further attempts. */
final class Abort extends ConveyorException
{
}
