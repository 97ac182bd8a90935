<?php

declare(strict_types=1);

namespace Conveyor\Amqp;

use Conveyor\Exception\Unavailable;
use PhpAmqpLib\Connection\AMQPStreamConnection;

/** Opens php-amqplib connections from an AMQP URL: amqp://user:password@host:port/vhost. */
final class Connector
{
    public static function connect(string $url, float $timeoutSeconds = 5.0, int $heartbeatSeconds = 30): AMQPStreamConnection
    {
        $parts = parse_url($url);
        if ($parts === false || !in_array($parts['scheme'] ?? '', ['amqp', 'amqps'], true)) {
            throw new \InvalidArgumentException('not an AMQP URL: ' . self::redact($url));
        }
        $vhost = isset($parts['path']) && $parts['path'] !== '' && $parts['path'] !== '/'
            ? rawurldecode(substr($parts['path'], 1)) : '/';
        try {
            return new AMQPStreamConnection(
                $parts['host'] ?? '127.0.0.1',
                $parts['port'] ?? 5672,
                rawurldecode($parts['user'] ?? 'guest'),
                rawurldecode($parts['pass'] ?? 'guest'),
                $vhost,
                false,
                'AMQPLAIN',
                null,
                'en_US',
                $timeoutSeconds,
                max(2.0 * $heartbeatSeconds, $timeoutSeconds),
                null,
                false,
                $heartbeatSeconds,
            );
        } catch (\Throwable $e) {
            throw new Unavailable('cannot connect to RabbitMQ at ' . self::redact($url) . ': ' . $e->getMessage(), 0, $e);
        }
    }

    /** The URL without its password, fit for messages and logs. */
    public static function redact(string $url): string
    {
        return (string) preg_replace('#//([^:/@]*):[^@/]*@#', '//$1:***@', $url);
    }
}
