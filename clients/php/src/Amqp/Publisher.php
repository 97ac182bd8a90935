<?php

declare(strict_types=1);

namespace Conveyor\Amqp;

use Conveyor\Exception\PublishFailed;
use PhpAmqpLib\Channel\AMQPChannel;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPTable;

/**
 * Confirmed publishing on one channel: publisher confirms, the mandatory flag and a return
 * listener, so a publish counts only once RabbitMQ has it, and an unroutable message (no queue
 * bound) is an error instead of silently lost. php-amqplib reports returns through the return
 * listener only: without one, a returned message is acked like any other.
 */
final class Publisher
{
    /** @var array<string, string> message_id => why it failed */
    private array $failed = [];

    public function __construct(private readonly AMQPChannel $channel, private readonly float $confirmTimeout = 15.0)
    {
        $channel->confirm_select();
        $channel->set_nack_handler(function (AMQPMessage $message): void {
            $this->failed[(string) ($message->get_properties()['message_id'] ?? '')] = 'refused by RabbitMQ (nack)';
        });
        $channel->set_return_listener(function (int $code, string $text, string $exchange, string $key, AMQPMessage $message): void {
            $id = (string) ($message->get_properties()['message_id'] ?? '');
            $this->failed[$id] = "returned by RabbitMQ: {$code} {$text} (exchange '{$exchange}', routing key '{$key}')";
        });
    }

    public function channel(): AMQPChannel
    {
        return $this->channel;
    }

    /**
     * A persistent JSON message. Every message gets a message_id (its task id when it is one) so a
     * nack or a return can be traced to it.
     *
     * @param array<string, string> $headers
     */
    public static function message(string $body, string $messageId, int $priority = 0, array $headers = [],
                                   ?string $replyTo = null, ?string $correlationId = null, bool $persistent = true): AMQPMessage
    {
        $properties = ['content_type' => 'application/json', 'message_id' => $messageId, 'priority' => $priority,
            'delivery_mode' => $persistent ? AMQPMessage::DELIVERY_MODE_PERSISTENT : AMQPMessage::DELIVERY_MODE_NON_PERSISTENT];
        if ($headers !== []) {
            $properties['application_headers'] = new AMQPTable($headers);
        }
        if ($replyTo !== null) {
            $properties['reply_to'] = $replyTo;
            $properties['correlation_id'] = $correlationId ?? bin2hex(random_bytes(8));
        }
        return new AMQPMessage($body, $properties);
    }

    /** Publish without waiting; confirm() later waits for all of them. */
    public function publish(AMQPMessage $message, string $exchange, string $routingKey, bool $mandatory = true): void
    {
        $this->channel->basic_publish($message, $exchange, $routingKey, $mandatory);
    }

    /** Wait until RabbitMQ confirmed every publish so far; throw PublishFailed naming what it refused or returned. */
    public function confirm(): void
    {
        try {
            $this->channel->wait_for_pending_acks_returns($this->confirmTimeout);
        } catch (\Throwable $e) {
            throw new PublishFailed('RabbitMQ did not confirm a publish: ' . $e->getMessage(), 0, $e);
        }
        if ($this->failed !== []) {
            $failed = $this->failed;
            $this->failed = [];
            $first = array_key_first($failed);
            throw new PublishFailed(sprintf('%d message(s) not accepted; %s: %s', count($failed), $first, $failed[$first]));
        }
    }

    /** publish() then confirm(). */
    public function publishConfirmed(AMQPMessage $message, string $exchange, string $routingKey, bool $mandatory = true): void
    {
        $this->publish($message, $exchange, $routingKey, $mandatory);
        $this->confirm();
    }
}
