<?php

declare(strict_types=1);

namespace Conveyor\Worker;

use Conveyor\Amqp\Publisher;
use Conveyor\Amqp\Topology;
use Conveyor\Json;
use Conveyor\TaskMessage;
use PhpAmqpLib\Exception\AMQPIOWaitException;
use PhpAmqpLib\Exception\AMQPTimeoutException;
use PhpAmqpLib\Message\AMQPMessage;

/**
 * Talking to the scheduling center over AMQP (docs/protocol.md §4-§5): claims, reports and
 * heartbeats are published to `_reports` with `reply_to` = RabbitMQ's direct reply-to, and the
 * center's answers come back on this channel, matched by correlation id.
 */
final class Center
{
    public const REPLY_TO = 'amq.rabbitmq.reply-to';

    /** Lease terms, as the center announces them in every claim and heartbeat answer. */
    public float $leaseSeconds = 30.0;
    public float $renewSeconds = 10.0;
    public float $heartbeatSeconds = 5.0;

    /** @var array<string, callable(array<string, mixed>): void> */
    private array $waiting = [];

    public function __construct(
        private readonly Publisher $publisher,
        private readonly Topology $topology,
        public readonly string $node,
        private readonly Log $log,
    ) {
    }

    /** Start receiving answers (direct reply-to: a no-ack consumer on the publishing channel). */
    public function listen(): void
    {
        $this->publisher->channel()->basic_consume(self::REPLY_TO, '', false, true, false, false,
            fn (AMQPMessage $message) => $this->onAnswer($message));
    }

    /**
     * Ask whether this node may run a delivered task message. The answer (decision run / drop /
     * later, attempt, delay_s, timeout, lease terms), or null when none came within $timeout.
     *
     * @return array<string, mixed>|null
     */
    public function claim(TaskMessage $message, string $queue, float $timeout): ?array
    {
        $body = ['protocol' => 1, 'kind' => 'claim', 'id' => $message->id, 'attempt' => $message->attempt,
            'node' => $this->node, 'queue' => $queue, 'message' => $message->toArray()];
        $answer = $this->ask($body, $timeout);
        if ($answer !== null) {
            $this->learnTerms($answer);
        }
        return $answer;
    }

    /**
     * Publish a report (running, succeeded, failed, returned) for attempt $attempt, confirmed.
     * $onAnswer, when given, gets the center's answer (applied, stop, reason) whenever it comes.
     *
     * @param array<string, mixed> $fields
     * @param (callable(array<string, mixed>): void)|null $onAnswer
     */
    public function report(string $taskId, int $attempt, string $status, array $fields = [], ?callable $onAnswer = null): void
    {
        $body = ['protocol' => 1, 'id' => $taskId, 'attempt' => $attempt, 'node' => $this->node, 'status' => $status,
            'at' => self::now()] + $fields;
        $this->send($body, $onAnswer);
        $this->publisher->confirm();
    }

    /**
     * Publish a heartbeat; the answer updates the lease terms.
     *
     * @param array<string, mixed> $fields queues, concurrency, in_flight, done, status, ...
     */
    public function heartbeat(array $fields, bool $confirm = false): void
    {
        $this->send(['protocol' => 1, 'kind' => 'heartbeat', 'node' => $this->node] + $fields,
            fn (array $answer) => $this->learnTerms($answer));
        if ($confirm) {
            $this->publisher->confirm();
        }
    }

    /**
     * Wait up to $seconds for RabbitMQ to send something (an answer, a confirm, a delivery),
     * then handle whatever else has already arrived; 0 only handles what is there.
     */
    public function pump(float $seconds): void
    {
        $channel = $this->publisher->channel();
        try {
            if ($seconds > 0) {
                $channel->wait(null, false, $seconds);
            }
            for ($i = 0; $i < 100 && $channel->wait(null, true) !== null; $i++) {
            }
        } catch (AMQPTimeoutException | AMQPIOWaitException) {
            // nothing came in time
        }
    }

    /**
     * @param array<string, mixed> $body
     * @return array<string, mixed>|null
     */
    private function ask(array $body, float $timeout): ?array
    {
        $answer = null;
        $correlation = $this->send($body, static function (array $got) use (&$answer): void {
            $answer = $got;
        });
        $deadline = microtime(true) + $timeout;
        while ($answer === null && microtime(true) < $deadline) {
            $this->pump(min(0.5, $deadline - microtime(true)));
        }
        unset($this->waiting[$correlation]);
        return $answer;
    }

    /**
     * @param array<string, mixed> $body
     * @param (callable(array<string, mixed>): void)|null $onAnswer
     */
    private function send(array $body, ?callable $onAnswer): string
    {
        $correlation = bin2hex(random_bytes(12));
        if ($onAnswer !== null) {
            $this->waiting[$correlation] = $onAnswer;
        }
        $message = Publisher::message(Json::encode($body), $correlation, 0, [],
            $onAnswer !== null ? self::REPLY_TO : null, $correlation);
        $this->publisher->publish($message, $this->topology->exchange(), Topology::REPORTS);
        return $correlation;
    }

    private function onAnswer(AMQPMessage $message): void
    {
        $properties = $message->get_properties();
        $correlation = (string) ($properties['correlation_id'] ?? '');
        $callback = $this->waiting[$correlation] ?? null;
        unset($this->waiting[$correlation]);
        if ($callback === null) {
            return; // an answer we stopped waiting for
        }
        try {
            $answer = Json::decode($message->getBody());
        } catch (\JsonException $e) {
            $this->log->warning('unreadable answer from the center: ' . $e->getMessage());
            return;
        }
        if (is_array($answer)) {
            $callback($answer);
        }
    }

    /** @param array<string, mixed> $answer */
    private function learnTerms(array $answer): void
    {
        foreach (['lease_s' => 'leaseSeconds', 'renew_s' => 'renewSeconds', 'heartbeat_s' => 'heartbeatSeconds'] as $key => $property) {
            if ((is_int($answer[$key] ?? null) || is_float($answer[$key] ?? null)) && $answer[$key] > 0) {
                $this->{$property} = (float) $answer[$key];
            }
        }
    }

    public static function now(): string
    {
        $time = \DateTimeImmutable::createFromFormat('U.u', sprintf('%.6F', microtime(true)));
        return $time === false ? gmdate('Y-m-d\TH:i:s\Z') : $time->format('Y-m-d\TH:i:s.v\Z');
    }
}
