<?php

declare(strict_types=1);

namespace Conveyor\Laravel;

use Conveyor\Client;
use Conveyor\Json;
use Illuminate\Contracts\Queue\Queue as QueueContract;
use Illuminate\Queue\Queue;

/**
 * Laravel's queue API onto Conveyor: `dispatch(new SendInvoice(...))` on a `conveyor`
 * connection submits a Conveyor task of type `laravel:App\Jobs\SendInvoice` whose params carry
 * Laravel's job payload; it is then stored, visible, retried (the job's `$tries`, else
 * `max_attempts` of the connection, else 3) and timed out (`$timeout`) by Conveyor, and run by
 * `php artisan conveyor:work`. pop() returns nothing: Conveyor hands tasks to its workers.
 */
final class ConveyorQueue extends Queue implements QueueContract
{
    public const TYPE_PREFIX = 'laravel:';

    /** @param array<string, mixed> $config */
    public function __construct(private readonly Client $client, private readonly string $default, private readonly array $config = [])
    {
    }

    public function size($queue = null): int
    {
        return 0; // the Conveyor console and GET /api/v1/queues show the depth
    }

    public function push($job, $data = '', $queue = null)
    {
        $queue = $this->getQueue($queue);
        return $this->enqueueUsing($job, $this->createPayload($job, $queue, $data), $queue, null,
            fn (string $payload, string $queue): string => $this->submit($payload, $queue, null));
    }

    public function pushRaw($payload, $queue = null, array $options = [])
    {
        return $this->submit($payload, $this->getQueue($queue), $options['delay'] ?? null);
    }

    public function later($delay, $job, $data = '', $queue = null)
    {
        $queue = $this->getQueue($queue);
        return $this->enqueueUsing($job, $this->createPayload($job, $queue, $data), $queue, $delay,
            fn (string $payload, string $queue, $delay): string => $this->submit($payload, $queue, $delay));
    }

    public function pop($queue = null)
    {
        return null;
    }

    public function getQueue(?string $queue): string
    {
        return $queue ?? $this->default;
    }

    /** @param \DateTimeInterface|\DateInterval|int|null $delay */
    private function submit(string $payload, string $queue, mixed $delay): string
    {
        $job = Json::decode($payload);
        $name = (string) ($job['displayName'] ?? 'job');
        $options = ['queue' => $queue, 'max_attempts' => (int) ($job['maxTries'] ?? $this->config['max_attempts'] ?? 3)];
        if (isset($job['timeout']) && $job['timeout'] > 0) {
            $options['timeout'] = (float) $job['timeout'];
        }
        if ($delay !== null && ($seconds = $this->secondsUntil($delay)) > 0) {
            $options['delay'] = (float) $seconds;
        }
        return $this->client->submit(mb_substr(self::TYPE_PREFIX . $name, 0, 200), ['laravel' => $job], $options);
    }
}
