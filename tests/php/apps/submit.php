<?php

declare(strict_types=1);

/*
 * submit.php http|amqp TYPE PARAMS_JSON [OPTIONS_JSON] [COUNT]: submit COUNT tasks with the PHP
 * Client (HTTP API at CONVEYOR_API_URL, or straight to RabbitMQ at CONVEYOR_BROKER_URL) and
 * print their ids as a JSON list. With "wait" as the 6th argument, also wait for each result.
 */

use Conveyor\Client;

require __DIR__ . '/../../../clients/php/src/autoload.php';

[, $mode, $type, $params] = $argv;
$options = json_decode($argv[4] ?? '{}', true, 512, JSON_THROW_ON_ERROR);
$count = (int) ($argv[5] ?? 1);
$api = (string) getenv('CONVEYOR_API_URL');
$client = $mode === 'amqp' ? Client::amqp((string) getenv('CONVEYOR_BROKER_URL'), $api) : Client::http($api);
$tasks = [];
for ($i = 0; $i < $count; $i++) {
    $tasks[] = ['type' => $type, 'params' => json_decode($params, true, 512, JSON_THROW_ON_ERROR)] + $options;
}
$ids = $count === 1 ? [$client->submit($type, $tasks[0]['params'], $options)] : $client->submitMany($tasks);
$results = [];
if (($argv[6] ?? '') === 'wait') {
    foreach ($ids as $id) {
        $results[$id] = $client->result($id, 30.0);
    }
}
echo json_encode(['ids' => $ids, 'results' => (object) $results], JSON_THROW_ON_ERROR), "\n";
$client->close();
