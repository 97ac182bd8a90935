<?php

declare(strict_types=1);

namespace Conveyor\Exception;

/** No task with that id (HTTP 404). */
final class NotFound extends HttpError
{
}
