<?php

declare(strict_types=1);

namespace Conveyor\Laravel;

use Conveyor\Worker;
use Illuminate\Console\Command;

/** `php artisan conveyor:work`: a Conveyor PHP worker that runs the Laravel jobs dispatched onto a `conveyor` connection. */
final class WorkCommand extends Command
{
    protected $signature = 'conveyor:work {connection? : The queue connection (default: the default one)}
        {--queues= : Comma-separated queues (default: the connection\'s queue)}
        {--concurrency=1 : Worker processes}
        {--node-id= : Node id (default host-pid)}
        {--broker= : AMQP URL (default: the connection\'s broker_url, else CONVEYOR_BROKER_URL)}';

    protected $description = 'Run Laravel jobs dispatched onto Conveyor';

    public function handle(): int
    {
        $connection = (string) ($this->argument('connection') ?: $this->laravel['config']['queue.default']);
        $config = (array) $this->laravel['config']["queue.connections.{$connection}"];
        $runner = new JobRunner($this->laravel, $connection);
        $worker = (new Worker())->fallback(
            static fn (string $type): ?callable => str_starts_with($type, ConveyorQueue::TYPE_PREFIX) ? $runner : null);
        return $worker->run(array_filter([
            'queues' => $this->option('queues') ?: ($config['queue'] ?? 'default'),
            'concurrency' => (int) $this->option('concurrency'),
            'node_id' => $this->option('node-id') ?: null,
            'broker_url' => $this->option('broker') ?: ($config['broker_url'] ?? null),
        ], static fn ($value): bool => $value !== null && $value !== ''));
    }
}
