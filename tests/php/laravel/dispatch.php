<?php

declare(strict_types=1);

/* dispatch.php NUMBER AMOUNT [fail]: dispatch App\Jobs\SendInvoice onto the default (conveyor) connection; prints the task id. */

$app = require __DIR__ . '/bootstrap.php';
$app->make(Illuminate\Contracts\Console\Kernel::class)->bootstrap();

$job = new App\Jobs\SendInvoice($argv[1], (float) $argv[2], ($argv[3] ?? '') === 'fail');
$id = $app->make(Illuminate\Contracts\Bus\Dispatcher::class)->dispatch($job);
dispatch(new App\Jobs\SendInvoice($argv[1] . '-helper', (float) $argv[2])); // the helper, as apps write it
echo $id, "\n";
