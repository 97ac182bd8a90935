<?php

declare(strict_types=1);

/*
 * Autoloading without Composer: the Conveyor\ classes of this package (PSR-4, src/), and
 * php-amqplib as Debian installs it (/usr/share/php is on Debian's include_path). With Composer,
 * use vendor/autoload.php instead (composer.json maps the same namespace).
 */

spl_autoload_register(static function (string $class): void {
    if (!str_starts_with($class, 'Conveyor\\')) {
        return;
    }
    $file = __DIR__ . '/' . str_replace('\\', '/', substr($class, strlen('Conveyor\\'))) . '.php';
    if (is_file($file)) {
        require $file;
    }
});

if (!class_exists(\PhpAmqpLib\Connection\AMQPStreamConnection::class)) {
    $amqplib = stream_resolve_include_path('PhpAmqpLib/autoload.php');
    if ($amqplib !== false) {
        require_once $amqplib;
    }
}
