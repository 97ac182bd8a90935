<?php

declare(strict_types=1);

namespace Conveyor\Exception;

/** A handler ran past its timeout and was stopped (recorded with error type "timeout"). */
final class TaskTimedOut extends ConveyorException
{
}
