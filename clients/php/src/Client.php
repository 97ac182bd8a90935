<?php

declare(strict_types=1);

namespace Conveyor;

use Conveyor\Amqp\Connector;
use Conveyor\Amqp\Publisher;
use Conveyor\Amqp\Topology;
use Conveyor\Exception\NotFound;
use Conveyor\Exception\TaskFailed;
use Conveyor\Exception\ValidationFailed;
use Conveyor\Exception\WaitTimedOut;
use Conveyor\Transport\Http;
use PhpAmqpLib\Connection\AMQPStreamConnection;

/**
 * Submit and follow Conveyor tasks from PHP.
 *
 *     $client = Client::http('http://127.0.0.1:8000', getenv('CONVEYOR_API_TOKEN') ?: null);
 *     $id = $client->submit('email.send', ['to' => 'a@example.com'], ['queue' => 'emails']);
 *     $result = $client->result($id, 30.0);
 *
 * Over HTTP (the default, right for php-fpm) the task is stored, then published, before submit()
 * returns; `idempotency_key` makes a submit safe to repeat. Client::amqp() publishes task messages
 * straight to RabbitMQ (for CLI daemons): publisher confirms, mandatory flag and a return
 * listener; the center adopts each task when it is claimed. There an idempotency key becomes the
 * task id (the same key, the same id: one task). get/wait/cancel/retry always use HTTP.
 *
 * Options of submit(): queue, priority (0-9), delay (seconds) or eta (DateTimeInterface or
 * ISO-8601), max_attempts, timeout (seconds), idempotency_key.
 */
final class Client
{
    private const OPTIONS = ['queue', 'priority', 'delay', 'eta', 'max_attempts', 'timeout', 'idempotency_key'];
    private const IDEMPOTENCY_NAMESPACE = 'conveyor:idempotency';

    private ?Http $http;
    private ?AMQPStreamConnection $connection = null;
    private ?Publisher $publisher = null;
    private readonly Topology $topology;
    /** @var array<string, true> ids this client published straight to RabbitMQ (unknown to the store until adopted) */
    private array $published = [];

    /** @param array{namespace?: string, queue_type?: string, timeout?: float} $options */
    public function __construct(
        ?string $url = null,
        ?string $token = null,
        private readonly ?string $amqpUrl = null,
        private readonly array $options = [],
    ) {
        $this->http = $url !== null ? new Http($url, $token, (float) ($options['timeout'] ?? 30.0)) : null;
        $this->topology = new Topology($options['namespace'] ?? 'conveyor', $options['queue_type'] ?? 'classic');
        if ($url === null && $amqpUrl === null) {
            throw new \InvalidArgumentException('give the HTTP API URL, an AMQP URL, or both');
        }
    }

    public static function http(string $url, ?string $token = null): self
    {
        return new self($url, $token);
    }

    /** @param array{namespace?: string, queue_type?: string, timeout?: float} $options */
    public static function amqp(string $amqpUrl, ?string $httpUrl = null, ?string $token = null, array $options = []): self
    {
        return new self($httpUrl, $token, $amqpUrl, $options);
    }

    /**
     * Submit one task; returns its id.
     *
     * @param array<mixed>|object $params keyword arguments of the handler (`[]` is sent as `{}`)
     * @param array<string, mixed> $options
     */
    public function submit(string $type, array|object $params = [], array $options = []): string
    {
        return $this->submitMany([['type' => $type, 'params' => $params] + $options])[0];
    }

    /**
     * Submit several tasks at once (HTTP: one request per 1,000; AMQP: one confirm wait);
     * every one is validated before any is sent. Returns their ids, in order.
     *
     * @param list<array<string, mixed>> $tasks each: type, params, and submit()'s options
     * @return list<string>
     */
    public function submitMany(array $tasks): array
    {
        $bodies = array_map(fn (array $task): array => $this->body($task), $tasks);
        if ($this->amqpUrl !== null) {
            return $this->publish($bodies);
        }
        $ids = [];
        foreach (array_chunk($bodies, 1000) as $chunk) {
            $answer = $this->api()->post('/api/v1/tasks:batch', ['tasks' => $chunk]);
            foreach ($answer['tasks'] ?? [] as $task) {
                $ids[] = (string) $task['id'];
            }
        }
        return $ids;
    }

    /** The task with its timeline (`events`). */
    public function get(string $id): Task
    {
        return new Task($this->api()->get('/api/v1/tasks/' . rawurlencode($id)));
    }

    /** Wait until the task is final (succeeded, failed or cancelled); throws WaitTimedOut after $timeout seconds. */
    public function wait(string $id, float $timeout = 30.0): Task
    {
        $deadline = microtime(true) + $timeout;
        $pause = 0.02;
        while (true) {
            try {
                $task = $this->get($id);
            } catch (NotFound $e) {
                if (!isset($this->published[$id])) {
                    throw $e;
                }
                $task = null; // published over AMQP: the store learns of it when a worker claims it
            }
            if ($task !== null && $task->isFinal()) {
                return $task;
            }
            if (microtime(true) >= $deadline) {
                $status = $task === null ? 'not picked up by any worker' : $task->status;
                throw new WaitTimedOut("task {$id} still {$status} after {$timeout} s");
            }
            usleep((int) (min($pause, max(0.0, $deadline - microtime(true))) * 1e6));
            $pause = min($pause * 2, 0.5);
        }
    }

    /** The handler's return value; throws TaskFailed if the task failed or was cancelled. */
    public function result(string $id, float $timeout = 30.0): mixed
    {
        $task = $this->wait($id, $timeout);
        if ($task->status !== 'succeeded') {
            throw new TaskFailed($id, $task->status, $task->error);
        }
        return $task->result;
    }

    /** Cancel a task that has not finished (Conflict if it has). */
    public function cancel(string $id): Task
    {
        return new Task($this->api()->post('/api/v1/tasks/' . rawurlencode($id) . '/cancel'));
    }

    /** Run a failed or cancelled task again: same id, attempts continue (Conflict otherwise). */
    public function retry(string $id): Task
    {
        return new Task($this->api()->post('/api/v1/tasks/' . rawurlencode($id) . '/retry'));
    }

    public function close(): void
    {
        if ($this->connection !== null) {
            $this->connection->close();
            $this->connection = null;
            $this->publisher = null;
        }
    }

    private function api(): Http
    {
        return $this->http ?? throw new \LogicException('this client has no HTTP API URL (needed for get, wait, cancel, retry)');
    }

    /**
     * The HTTP body of one task, validated with the protocol's bounds.
     *
     * @param array<string, mixed> $task
     * @return array<string, mixed>
     */
    private function body(array $task): array
    {
        $unknown = array_diff(array_keys($task), ['type', 'params', ...self::OPTIONS]);
        if ($unknown !== []) {
            throw new ValidationFailed('unknown option(s): ' . implode(', ', $unknown), array_values($unknown));
        }
        $body = ['type' => Validation::type($task['type'] ?? null), 'params' => Json::params($task['params'] ?? [])];
        Validation::json($body['params'], 'params');
        if (isset($task['queue'])) {
            $body['queue'] = Validation::queue($task['queue']);
        }
        if (isset($task['priority'])) {
            $body['priority'] = Validation::int($task['priority'], 'priority', 0, Validation::MAX_PRIORITY);
        }
        if (isset($task['max_attempts'])) {
            $body['max_attempts'] = Validation::int($task['max_attempts'], 'max_attempts', 1, Validation::MAX_ATTEMPTS);
        }
        if (isset($task['timeout'])) {
            $body['timeout'] = Validation::seconds($task['timeout'], 'timeout', Validation::MAX_TIMEOUT_S, true);
        }
        if (isset($task['delay'])) {
            $body['delay'] = Validation::seconds($task['delay'], 'delay', Validation::MAX_DELAY_S, false);
        }
        if (isset($task['eta'])) {
            $eta = $task['eta'] instanceof \DateTimeInterface
                ? \DateTimeImmutable::createFromInterface($task['eta'])->setTimezone(new \DateTimeZone('UTC'))->format('Y-m-d\TH:i:s.v\Z')
                : $task['eta'];
            $body['eta'] = Validation::instant($eta, 'eta');
        }
        if (isset($task['idempotency_key'])) {
            $body['idempotency_key'] = Validation::text($task['idempotency_key'], 'idempotency_key', Validation::MAX_KEY_LENGTH);
        }
        return $body;
    }

    /**
     * Publish task messages straight to RabbitMQ (docs/protocol.md §3b) and wait for every confirm.
     *
     * @param list<array<string, mixed>> $bodies
     * @return list<string>
     */
    private function publish(array $bodies): array
    {
        $publisher = $this->publisher();
        $channel = $publisher->channel();
        $ids = [];
        foreach ($bodies as $body) {
            $key = $body['idempotency_key'] ?? null;
            $id = $key !== null ? Uuid::fromName(self::IDEMPOTENCY_NAMESPACE, $key) : Uuid::v7();
            $queue = $body['queue'] ?? 'default';
            $delay = (float) ($body['delay'] ?? 0.0);
            $eta = $body['eta'] ?? null;
            if ($eta !== null) {
                $delay = max(0.0, (float) (new \DateTimeImmutable($eta))->format('U.u') - microtime(true));
            } elseif ($delay > 0) {
                $eta = gmdate('Y-m-d\TH:i:s', (int) (microtime(true) + $delay)) . 'Z';
            }
            $message = new TaskMessage($id, $body['type'], (array) $body['params'], $queue, $body['priority'] ?? 0,
                1, $body['max_attempts'] ?? 3, $body['timeout'] ?? null, $eta);
            $this->topology->declareQueue($channel, $queue);
            $amqp = Publisher::message($message->encode(), $id, $message->priority);
            $ms = Topology::delayMs($delay);
            if ($ms > 0) {
                $publisher->publish($amqp, '', $this->topology->declareDelayQueue($channel, $queue, $ms));
            } else {
                $publisher->publish($amqp, $this->topology->exchange(), $queue);
            }
            $ids[] = $id;
        }
        $publisher->confirm();
        foreach ($ids as $id) {
            $this->published[$id] = true;
        }
        return $ids;
    }

    private function publisher(): Publisher
    {
        if ($this->publisher === null) {
            $this->connection = Connector::connect((string) $this->amqpUrl);
            $this->publisher = new Publisher($this->connection->channel());
        }
        return $this->publisher;
    }
}
