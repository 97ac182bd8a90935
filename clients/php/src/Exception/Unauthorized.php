<?php

declare(strict_types=1);

namespace Conveyor\Exception;

/** Missing or wrong bearer token (HTTP 401). */
final class Unauthorized extends HttpError
{
}
