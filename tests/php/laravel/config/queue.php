<?php

return [
    'default' => 'conveyor',
    'connections' => [
        'conveyor' => [
            'driver' => 'conveyor',
            'url' => env('CONVEYOR_API_URL'),
            'token' => env('CONVEYOR_API_TOKEN'),
            'broker_url' => env('CONVEYOR_BROKER_URL'),
            'queue' => 'laravel',
        ],
    ],
    'failed' => ['driver' => 'null'],
];
