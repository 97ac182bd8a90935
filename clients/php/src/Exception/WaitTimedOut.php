<?php

declare(strict_types=1);

namespace Conveyor\Exception;

/** Client::wait() gave up before the task finished. */
final class WaitTimedOut extends ConveyorException
{
}
