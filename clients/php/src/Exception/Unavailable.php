<?php

declare(strict_types=1);

namespace Conveyor\Exception;

/** The server, its store or its broker cannot be reached (HTTP 503, or no answer at all). */
class Unavailable extends ConveyorException
{
}
