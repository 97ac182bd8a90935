<?php

declare(strict_types=1);

namespace Conveyor;

use Conveyor\Worker\Consumer;
use Conveyor\Worker\Log;
use Conveyor\Worker\Settings;
use Conveyor\Worker\Supervisor;

/**
 * A Conveyor execution node in PHP.
 *
 *     $worker = new Conveyor\Worker();
 *     $worker->register('email.send', fn (array $params, TaskContext $task) => send($params['to']));
 *     $worker->register('invoice.render', RenderInvoice::class);   // implements Conveyor\Handler
 *     exit($worker->run(['queues' => ['emails'], 'concurrency' => 4]));
 *
 * run() reads CONVEYOR_BROKER_URL, CONVEYOR_QUEUES, CONVEYOR_CONCURRENCY, CONVEYOR_NODE_ID,
 * CONVEYOR_GRACE_S, ... (Worker\Settings), overridden by its options. Each delivery is claimed
 * from the center before it runs (a stale or duplicate copy never runs), then run in a child
 * process with its timeout enforced, its lease renewed and the node heartbeating; SIGTERM stops
 * taking work, lets the running task finish within the grace period, and gives it back otherwise.
 */
final class Worker
{
    /** @var array<string, callable|class-string> */
    private array $handlers = [];
    /** @var callable|null */
    private $fallback = null;

    /**
     * @param callable(array<string, mixed>, TaskContext): mixed|class-string<Handler> $handler
     */
    public function register(string $type, callable|string $handler): self
    {
        Validation::type($type);
        if (!is_callable($handler) && !(class_exists($handler) && is_subclass_of($handler, Handler::class))) {
            throw new \InvalidArgumentException("handler for {$type} must be a callable or a class implementing " . Handler::class);
        }
        $this->handlers[$type] = $handler;
        return $this;
    }

    /**
     * A handler for types registered nowhere else (returns null to decline one, which is then
     * dead-lettered as unknown). The Laravel connector runs its jobs this way.
     *
     * @param callable(string): (callable|null) $resolver
     */
    public function fallback(callable $resolver): self
    {
        $this->fallback = $resolver;
        return $this;
    }

    /** @return list<string> */
    public function types(): array
    {
        return array_keys($this->handlers);
    }

    /** The callable for a task type, or null when none is registered. */
    public function handlerFor(string $type): ?callable
    {
        $handler = $this->handlers[$type] ?? null;
        if ($handler === null) {
            return $this->fallback === null ? null : ($this->fallback)($type);
        }
        if (is_string($handler) && !is_callable($handler)) {
            $instance = new $handler();
            return [$instance, 'handle'];
        }
        return $handler;
    }

    /**
     * Run until SIGTERM/SIGINT; returns the exit code.
     *
     * @param array<string, mixed> $options see Worker\Settings::load()
     */
    public function run(array $options = []): int
    {
        foreach (['pcntl_fork', 'posix_kill'] as $function) {
            if (!function_exists($function)) {
                throw new \RuntimeException("the worker needs PHP's pcntl and posix extensions ({$function} is missing)");
            }
        }
        $settings = Settings::load($options);
        $base = $settings->nodeId ?? (gethostname() . '-' . getmypid());
        $log = new Log($base, $settings->logLevel);
        $runOne = function (string $node) use ($settings, $log): int {
            $consumer = new Consumer($settings->withNodeId($node), fn (string $type): ?callable => $this->handlerFor($type),
                $log->withNode($node), $node);
            return $consumer->run();
        };
        // Always supervised, even one process: a worker whose connection died is started again.
        $name = static function (int $slot) use ($settings, $base): string {
            if ($settings->nodeId === null) {
                return gethostname() . '-' . getmypid(); // the worker process's own pid
            }
            return $settings->concurrency === 1 ? $base : "{$base}-{$slot}";
        };
        return (new Supervisor($settings->concurrency, static fn (int $slot): int => $runOne($name($slot)), $log))->run();
    }
}
