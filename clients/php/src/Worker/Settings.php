<?php

declare(strict_types=1);

namespace Conveyor\Worker;

/**
 * How a worker runs: from the environment (CONVEYOR_*, as the Python worker) overridden by
 * explicit options (bin/conveyor-worker flags, Worker::run() arguments).
 */
final class Settings
{
    /** @param list<string> $queues */
    public function __construct(
        public readonly string $brokerUrl = 'amqp://guest:guest@127.0.0.1:5672/',
        public readonly array $queues = ['default'],
        public readonly int $concurrency = 1,
        public readonly ?string $nodeId = null,
        public readonly string $namespace = 'conveyor',
        public readonly string $queueType = 'classic',
        public readonly float $graceSeconds = 30.0,
        public readonly float $claimTimeout = 10.0,
        public readonly float $ackHandoffSeconds = 60.0,
        public readonly string $logLevel = 'info',
    ) {
        if ($queues === []) {
            throw new \InvalidArgumentException('a worker needs at least one queue');
        }
        if ($concurrency < 1) {
            throw new \InvalidArgumentException('concurrency must be at least 1');
        }
    }

    /**
     * @param array<string, mixed> $options broker_url, queues (list or "a,b"), concurrency, node_id,
     *        namespace, queue_type, grace_s, claim_timeout_s, ack_handoff_s, log_level
     * @param array<string, string>|null $env
     */
    public static function load(array $options = [], ?array $env = null): self
    {
        $env ??= getenv();
        $pick = static function (string $key, string $envName, mixed $default) use ($options, $env): mixed {
            if (array_key_exists($key, $options) && $options[$key] !== null) {
                return $options[$key];
            }
            $value = $env[$envName] ?? '';
            return $value === '' ? $default : $value;
        };
        $queues = $pick('queues', 'CONVEYOR_QUEUES', 'default');
        if (is_string($queues)) {
            $queues = array_values(array_filter(array_map('trim', explode(',', $queues)), 'strlen'));
        }
        return new self(
            brokerUrl: (string) $pick('broker_url', 'CONVEYOR_BROKER_URL', 'amqp://guest:guest@127.0.0.1:5672/'),
            queues: array_values($queues),
            concurrency: (int) $pick('concurrency', 'CONVEYOR_CONCURRENCY', 1),
            nodeId: ($node = $pick('node_id', 'CONVEYOR_NODE_ID', null)) === null ? null : (string) $node,
            namespace: (string) $pick('namespace', 'CONVEYOR_NAMESPACE', 'conveyor'),
            queueType: (string) $pick('queue_type', 'CONVEYOR_QUEUE_TYPE', 'classic'),
            graceSeconds: (float) $pick('grace_s', 'CONVEYOR_GRACE_S', 30.0),
            claimTimeout: (float) $pick('claim_timeout_s', 'CONVEYOR_CLAIM_TIMEOUT_S', 10.0),
            ackHandoffSeconds: (float) $pick('ack_handoff_s', 'CONVEYOR_ACK_HANDOFF_S', 60.0),
            logLevel: strtolower((string) $pick('log_level', 'CONVEYOR_LOG_LEVEL', 'info')),
        );
    }

    public function withNodeId(string $nodeId): self
    {
        return new self($this->brokerUrl, $this->queues, $this->concurrency, $nodeId, $this->namespace,
            $this->queueType, $this->graceSeconds, $this->claimTimeout, $this->ackHandoffSeconds, $this->logLevel);
    }
}
