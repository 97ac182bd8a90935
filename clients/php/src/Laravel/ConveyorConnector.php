<?php

declare(strict_types=1);

namespace Conveyor\Laravel;

use Conveyor\Client;
use Illuminate\Contracts\Queue\Queue;
use Illuminate\Queue\Connectors\ConnectorInterface;

/** Builds the `conveyor` queue from its connection config (url, token, amqp, queue). */
final class ConveyorConnector implements ConnectorInterface
{
    /** @param array<string, mixed> $config */
    public function connect(array $config): Queue
    {
        $url = $config['url'] ?? null;
        $amqp = $config['amqp'] ?? null;
        $client = new Client(is_string($url) && $url !== '' ? $url : null, $config['token'] ?? null,
            is_string($amqp) && $amqp !== '' ? $amqp : null);
        return new ConveyorQueue($client, (string) ($config['queue'] ?? 'default'), $config);
    }
}
