<?php

return [
    'name' => 'conveyor-laravel-test',
    'env' => 'testing',
    'debug' => true,
    'key' => 'base64:' . base64_encode(str_repeat('k', 32)),
    'cipher' => 'AES-256-CBC',
    'providers' => [
        Illuminate\Bus\BusServiceProvider::class,
        Illuminate\Events\EventServiceProvider::class,
        Illuminate\Filesystem\FilesystemServiceProvider::class,
        Illuminate\Queue\QueueServiceProvider::class,
        Conveyor\Laravel\ConveyorServiceProvider::class,
    ],
    'aliases' => [],
];
