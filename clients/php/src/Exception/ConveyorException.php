<?php

declare(strict_types=1);

namespace Conveyor\Exception;

/** The root of every exception this package throws (and of Retry and Abort, which handlers throw). */
class ConveyorException extends \RuntimeException
{
}
