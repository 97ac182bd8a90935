<?php

declare(strict_types=1);

namespace Conveyor\Exception;

/** The task's status does not allow it, e.g. cancelling a finished task (HTTP 409). */
final class Conflict extends HttpError
{
}
