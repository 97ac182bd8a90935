<?php

/*
 * A producer as teams have them today (the RabbitMQ tutorial's new_task.php, with php-amqplib
 * only): declare the durable queue, publish persistent plain-text bodies. Conveyor is not used.
 *
 *   legacy_producer.php QUEUE COUNT [MESSAGE_ID_PREFIX]   (AMQP URL in CONVEYOR_BROKER_URL)
 */

require_once 'PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Message\AMQPMessage;

[, $queue, $count] = $argv;
$prefix = $argv[3] ?? null;
$url = parse_url((string) getenv('CONVEYOR_BROKER_URL'));
$connection = new AMQPStreamConnection($url['host'], $url['port'] ?? 5672, $url['user'], $url['pass'],
    rawurldecode(substr($url['path'] ?? '/', 1)) ?: '/');
$channel = $connection->channel();
$channel->queue_declare($queue, false, true, false, false);
for ($i = 0; $i < (int) $count; $i++) {
    $properties = ['delivery_mode' => AMQPMessage::DELIVERY_MODE_PERSISTENT];
    if ($prefix !== null) {
        $properties['message_id'] = "{$prefix}-{$i}";
    }
    $channel->basic_publish(new AMQPMessage("Task {$i}", $properties), '', $queue);
}
$channel->close();
$connection->close();
