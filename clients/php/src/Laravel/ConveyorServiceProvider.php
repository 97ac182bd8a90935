<?php

declare(strict_types=1);

namespace Conveyor\Laravel;

use Illuminate\Support\ServiceProvider;

/**
 * Registers the `conveyor` queue driver and `php artisan conveyor:work`. In config/queue.php:
 *
 *     'conveyor' => ['driver' => 'conveyor', 'url' => env('CONVEYOR_API_URL'),
 *                    'token' => env('CONVEYOR_API_TOKEN'), 'queue' => 'default'],
 */
final class ConveyorServiceProvider extends ServiceProvider
{
    public function boot(): void
    {
        $this->app['queue']->addConnector('conveyor', static fn (): ConveyorConnector => new ConveyorConnector());
        if ($this->app->runningInConsole()) {
            $this->commands([WorkCommand::class]);
        }
    }
}
