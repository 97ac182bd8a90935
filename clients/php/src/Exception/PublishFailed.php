<?php

declare(strict_types=1);

namespace Conveyor\Exception;

/** RabbitMQ refused a publish (nack), returned it as unroutable, or did not confirm it in time. */
final class PublishFailed extends Unavailable
{
}
