<?php

declare(strict_types=1);

namespace Conveyor\Worker;

use Conveyor\Amqp\Connector;
use Conveyor\Amqp\Publisher;
use Conveyor\Amqp\Topology;
use Conveyor\Exception\InvalidMessage;
use Conveyor\TaskContext;
use Conveyor\TaskMessage;
use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPTable;

/**
 * One worker process (docs/protocol.md §4): consume the task queues with prefetch 1 and manual
 * acks, claim every delivery before running it, run it in a child process while renewing its
 * lease and heartbeating at the periods the center announces, report the outcome (confirmed),
 * then ack. Malformed bodies and unknown types are dead-lettered with the reason.
 */
final class Consumer
{
    private AMQPStreamConnection $connection;
    private Publisher $publisher;
    private Topology $topology;
    private Center $center;
    /** @var list<array{string, AMQPMessage}> deliveries received, not yet handled */
    private array $inbox = [];
    /** @var list<string> consumer tags of the task queues */
    private array $tags = [];
    private bool $stopping = false;
    private int $done = 0;
    private int $inFlight = 0;
    private float $startedAt;
    private float $nextHeartbeat = 0.0;

    /** @param callable(string): (callable|null) $handlerFor */
    public function __construct(
        private readonly Settings $settings,
        private $handlerFor,
        private readonly Log $log,
        private readonly string $node,
    ) {
        $this->startedAt = microtime(true);
    }

    /** Run until SIGTERM/SIGINT; returns the process exit code. */
    public function run(): int
    {
        pcntl_async_signals(true);
        $stop = function (int $signal): void {
            if (!$this->stopping) {
                $this->log->info('received ' . ($signal === SIGTERM ? 'SIGTERM' : 'SIGINT') . ': stopping (grace '
                    . $this->settings->graceSeconds . ' s)');
            }
            $this->stopping = true;
        };
        // No restarted system calls: a blocking wait must return for the handler to run.
        pcntl_signal(SIGTERM, $stop, false);
        pcntl_signal(SIGINT, $stop, false);
        $this->connect();
        $this->log->info(sprintf('worker %s started: queues=%s', $this->node, implode(',', $this->settings->queues)));
        while (!$this->stopping) {
            if ($this->inbox === []) {
                $this->center->pump(max(0.0, min(0.5, $this->nextHeartbeat - microtime(true))));
            }
            $this->heartbeatIfDue();
            if ($this->inbox !== [] && !$this->stopping) {
                [$queue, $message] = array_shift($this->inbox);
                $this->handle($queue, $message);
            }
        }
        $this->shutdown();
        return 0;
    }

    private function connect(): void
    {
        $this->connection = Connector::connect($this->settings->brokerUrl);
        $channel = $this->connection->channel();
        $this->publisher = new Publisher($channel);
        $this->topology = new Topology($this->settings->namespace, $this->settings->queueType);
        $this->topology->declareQueue($channel, Topology::REPORTS);
        $this->topology->declareDeadLetters($channel);
        $this->center = new Center($this->publisher, $this->topology, $this->node, $this->log);
        $this->center->listen();
        $this->heartbeat(); // learns the lease terms from the answer
        $this->center->pump(1.0);
        // Prefetch 1 per queue: never hold work another node could be doing.
        $channel->basic_qos(0, 1, false);
        foreach ($this->settings->queues as $queue) {
            $name = $this->topology->declareQueue($channel, $queue);
            $this->tags[] = $channel->basic_consume($name, '', false, false, false, false,
                function (AMQPMessage $message) use ($queue): void {
                    $this->inbox[] = [$queue, $message];
                });
        }
    }

    private function handle(string $queue, AMQPMessage $delivery): void
    {
        try {
            $message = TaskMessage::fromBody($delivery->getBody());
        } catch (InvalidMessage $e) {
            $this->log->error("dead-lettering a malformed message from {$queue}: " . $e->getMessage());
            $this->deadLetter($delivery, $queue, 'malformed message: ' . $e->getMessage());
            return;
        }
        $answer = $this->center->claim($message, $queue, $this->settings->claimTimeout);
        if ($answer === null) {
            $this->log->warning("no claim answer for task {$message->id} within {$this->settings->claimTimeout} s; giving it back");
            $delivery->nack(true);
            return;
        }
        $decision = $answer['decision'] ?? null; // an error answer has none: refused below
        if ($decision === 'drop') {
            $this->log->info("dropping task {$message->id} attempt {$message->attempt}: " . ($answer['reason'] ?? ''));
            $delivery->ack();
        } elseif ($decision === 'later') {
            $this->later($delivery, $queue, (float) ($answer['delay_s'] ?? 1.0));
        } elseif ($decision === 'run' && is_int($answer['attempt'] ?? null)) {
            $this->runAttempt($queue, $delivery, $message, $answer);
        } else {
            $this->deadLetter($delivery, $queue, 'claim refused: ' . (string) ($answer['reason'] ?? 'no reason'));
        }
    }

    /** @param array<string, mixed> $claim */
    private function runAttempt(string $queue, AMQPMessage $delivery, TaskMessage $message, array $claim): void
    {
        $attempt = (int) $claim['attempt'];
        $handler = ($this->handlerFor)($message->type);
        if ($handler === null) {
            $reason = "unknown task type '{$message->type}': no handler registered on node {$this->node}";
            $this->log->error("task {$message->id}: {$reason}; dead-lettered");
            $this->center->report($message->id, $attempt, 'failed', ['retry' => false,
                'error' => ['type' => 'unknown_task', 'message' => $reason, 'traceback' => null]]);
            $this->deadLetter($delivery, $queue, $reason);
            return;
        }
        $timeout = $claim['timeout'] ?? $message->timeout;
        $context = new TaskContext($message->id, $message->type, $attempt, $message->maxAttempts, $this->node, $queue);
        $this->inFlight = 1;
        $acked = false;
        $outcome = $this->watch(Execution::start($handler, $message->params, $context), $message->id, $attempt,
            $timeout === null ? null : (float) $timeout, $delivery, $acked);
        $this->inFlight = 0;
        $this->done++;
        $this->settle($outcome, $message, $attempt, $delivery, $acked);
    }

    /** Run the attempt to its end, renewing its lease; stop it on a timeout, a stop answer or shutdown. */
    private function watch(Execution $run, string $id, int $attempt, ?float $timeout, AMQPMessage $delivery, bool &$acked): Outcome
    {
        $start = microtime(true);
        $deadline = $timeout === null ? null : $start + $timeout;
        $nextRenew = $start + $this->center->renewSeconds;
        $stop = null;
        $graceEnd = null;
        while (!$run->poll(0.1)) {
            $now = microtime(true);
            if ($deadline !== null && $now >= $deadline) {
                $run->kill();
                return \Conveyor\Worker\Outcome::failed('timeout', sprintf('task ran longer than its timeout of %g s', $timeout), null);
            }
            if ($stop !== null) {
                $run->kill();
                return Outcome::stopped($stop);
            }
            if ($this->stopping) {
                $graceEnd ??= $now + $this->settings->graceSeconds;
                if ($now >= $graceEnd) {
                    $run->kill();
                    return Outcome::interrupted();
                }
            }
            if ($now >= $nextRenew) {
                $this->center->report($id, $attempt, 'running', [], function (array $answer) use (&$stop): void {
                    if (($answer['stop'] ?? false) === true) {
                        $stop = (string) ($answer['reason'] ?? 'stopped by the center');
                    }
                });
                $nextRenew = $now + $this->center->renewSeconds;
            }
            if (!$acked && $now - $start >= $this->settings->ackHandoffSeconds) {
                $delivery->ack(); // a long task: from here the store lease alone guards it
                $acked = true;
                $this->log->info("task {$id} runs long: delivery acked, the store lease now guards it");
            }
            $this->heartbeatIfDue();
            $this->center->pump(0);
        }
        if ($stop !== null) { // it finished, but after this node lost it: its outcome is not ours
            return Outcome::stopped($stop);
        }
        return $run->outcome();
    }

    private function settle(Outcome $outcome, TaskMessage $message, int $attempt, AMQPMessage $delivery, bool $acked): void
    {
        $id = $message->id;
        switch ($outcome->kind) {
            case Outcome::STOPPED:
                $this->log->warning("task {$id} attempt {$attempt} stopped: {$outcome->reason}");
                break;
            case Outcome::INTERRUPTED:
                $this->center->report($id, $attempt, 'returned', ['republish' => $acked]);
                if (!$acked) {
                    $delivery->nack(true);
                    return;
                }
                break;
            case Outcome::SUCCEEDED:
                $this->center->report($id, $attempt, 'succeeded', ['result' => $outcome->result]);
                $this->log->debug("task {$id} succeeded");
                break;
            default:
                $fields = ['error' => $outcome->error, 'retry' => $outcome->retry];
                if ($outcome->retryDelay !== null) {
                    $fields['retry_delay_s'] = $outcome->retryDelay;
                }
                $this->center->report($id, $attempt, 'failed', $fields);
                $this->log->warning("task {$id} attempt {$attempt} failed: {$outcome->error['type']}: {$outcome->error['message']}");
        }
        if (!$acked) {
            $delivery->ack(); // only after the report is confirmed
        }
    }

    /** Give the delivery back through a delay queue: the center said not yet. */
    private function later(AMQPMessage $delivery, string $queue, float $delaySeconds): void
    {
        $channel = $this->publisher->channel();
        $name = $this->topology->declareDelayQueue($channel, $queue, max(100, \Conveyor\Amqp\Topology::delayMs($delaySeconds)));
        $this->publisher->publishConfirmed($this->copy($delivery), '', $name);
        $delivery->ack();
    }

    private function deadLetter(AMQPMessage $delivery, string $queue, string $reason): void
    {
        $headers = ['x-conveyor-reason' => mb_substr($reason, 0, 1000), 'x-conveyor-queue' => $queue];
        $copy = $this->copy($delivery, $headers);
        $this->publisher->publishConfirmed($copy, '', $this->topology->deadLetterQueue());
        $delivery->ack();
    }

    /** @param array<string, string> $extraHeaders */
    private function copy(AMQPMessage $delivery, array $extraHeaders = []): AMQPMessage
    {
        $properties = $delivery->get_properties();
        unset($properties['delivery_tag']);
        $headers = isset($properties['application_headers']) && $properties['application_headers'] instanceof AMQPTable
            ? $properties['application_headers']->getNativeData() : [];
        $headers = array_merge($headers, $extraHeaders);
        $properties['application_headers'] = new AMQPTable($headers);
        $properties['delivery_mode'] = AMQPMessage::DELIVERY_MODE_PERSISTENT;
        $properties['message_id'] ??= bin2hex(random_bytes(8));
        return new AMQPMessage($delivery->getBody(), $properties);
    }

    private function heartbeatIfDue(): void
    {
        if (microtime(true) >= $this->nextHeartbeat) {
            $this->heartbeat();
        }
    }

    private function heartbeat(string $status = 'live'): void
    {
        $this->center->heartbeat(['queues' => $this->settings->queues, 'concurrency' => 1,
            'in_flight' => $this->inFlight, 'done' => $this->done, 'host' => (string) gethostname(),
            'pid' => getmypid(), 'started_at' => gmdate('Y-m-d\TH:i:s\Z', (int) $this->startedAt), 'status' => $status],
            $status !== 'live');
        $this->nextHeartbeat = microtime(true) + $this->center->heartbeatSeconds;
    }

    private function shutdown(): void
    {
        $channel = $this->publisher->channel();
        foreach ($this->tags as $tag) {
            try {
                $channel->basic_cancel($tag);
            } catch (\Throwable $e) {
                $this->log->debug('cancel failed: ' . $e->getMessage());
            }
        }
        foreach ($this->inbox as [, $message]) {
            $message->nack(true); // received but never started: back to the queue
        }
        $this->inbox = [];
        $this->heartbeat('stopped');
        $this->connection->close();
        $this->log->info("worker {$this->node} stopped after {$this->done} task(s)");
    }
}
