<?php

declare(strict_types=1);

namespace Conveyor\Amqp;

use PhpAmqpLib\Channel\AMQPChannel;
use PhpAmqpLib\Wire\AMQPTable;

/**
 * Conveyor's RabbitMQ names and declarations (docs/protocol.md §1), every name under the
 * namespace ("conveyor"). Declarations use exactly Conveyor's arguments: RabbitMQ refuses a
 * redeclaration with other ones (PRECONDITION_FAILED).
 */
final class Topology
{
    public const REPORTS = '_reports';
    private const MAX_DELAY_S = 7 * 24 * 3600.0;

    /** @var array<string, true> */
    private array $declared = [];

    public function __construct(
        public readonly string $namespace = 'conveyor',
        public readonly string $queueType = 'classic',
    ) {
        if (!in_array($queueType, ['classic', 'quorum'], true)) {
            throw new \InvalidArgumentException("queue type must be classic or quorum, not {$queueType}");
        }
    }

    public function exchange(): string
    {
        return $this->namespace;
    }

    public function queueName(string $queue): string
    {
        return "{$this->namespace}.{$queue}";
    }

    public function deadLetterQueue(): string
    {
        return "{$this->namespace}.dead";
    }

    /** @return array<string, mixed> */
    public function queueArguments(): array
    {
        return $this->queueType === 'quorum' ? ['x-queue-type' => 'quorum'] : ['x-max-priority' => 10];
    }

    /** Exchange, then the task queue for logical queue $queue, bound by its name. */
    public function declareQueue(AMQPChannel $channel, string $queue): string
    {
        $name = $this->queueName($queue);
        if (!isset($this->declared[$name])) {
            $this->declareExchange($channel);
            $channel->queue_declare($name, false, true, false, false, false, new AMQPTable($this->queueArguments()));
            $channel->queue_bind($name, $this->exchange(), $queue);
            $this->declared[$name] = true;
        }
        return $name;
    }

    public function declareExchange(AMQPChannel $channel): void
    {
        if (!isset($this->declared['@exchange'])) {
            $channel->exchange_declare($this->exchange(), 'direct', false, true, false);
            $this->declared['@exchange'] = true;
        }
    }

    public function declareDeadLetters(AMQPChannel $channel): string
    {
        $name = $this->deadLetterQueue();
        if (!isset($this->declared[$name])) {
            $arguments = $this->queueType === 'quorum' ? new AMQPTable(['x-queue-type' => 'quorum']) : [];
            $channel->queue_declare($name, false, true, false, false, false, $arguments);
            $this->declared[$name] = true;
        }
        return $name;
    }

    /**
     * The delay queue holding messages for logical queue $queue $ms milliseconds before they are
     * routed back to it (published through the default exchange). Re-declared on every use, as
     * an idle one deletes itself 60 s after its TTL.
     */
    public function declareDelayQueue(AMQPChannel $channel, string $queue, int $ms): string
    {
        $name = "{$this->namespace}.delay.{$queue}.{$ms}";
        $arguments = ['x-message-ttl' => $ms, 'x-dead-letter-exchange' => $this->exchange(),
            'x-dead-letter-routing-key' => $queue, 'x-expires' => $ms + 60000];
        if ($this->queueType === 'quorum') {
            $arguments['x-queue-type'] = 'quorum';
        }
        $channel->queue_declare($name, false, true, false, false, false, new AMQPTable($arguments));
        return $name;
    }

    /** Delays are rounded up, as Conveyor does, so delay queues are shared: 100 ms steps below 1 s, then whole seconds. */
    public static function delayMs(float $seconds): int
    {
        if ($seconds <= 0) {
            return 0;
        }
        $ms = min($seconds, self::MAX_DELAY_S) * 1000.0 - 1e-6;
        $step = $ms < 1000 ? 100 : 1000;
        return (int) max($step, ceil($ms / $step) * $step);
    }
}
