<?php

declare(strict_types=1);

namespace App\Jobs;

use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Foundation\Bus\Dispatchable;
use Illuminate\Queue\InteractsWithQueue;

final class SendInvoice implements ShouldQueue
{
    use Dispatchable;
    use InteractsWithQueue;
    use Queueable;

    public int $tries = 2;
    public int $timeout = 20;

    public function __construct(public string $number, public float $amount, public bool $fail = false)
    {
    }

    public function handle(): void
    {
        $log = getenv('CONVEYOR_TEST_EXEC_LOG');
        if ($log) {
            file_put_contents($log, sprintf("%s\t%s\t%d\t%s\t%d\t%.6f\n", $this->job->getJobId(), 'laravel',
                $this->attempts(), 'laravel', getmypid(), microtime(true)), FILE_APPEND | LOCK_EX);
        }
        if ($this->fail) {
            throw new \RuntimeException("invoice {$this->number} bounced");
        }
        file_put_contents((string) getenv('CONVEYOR_LARAVEL_SENT'), "{$this->number} {$this->amount}\n", FILE_APPEND | LOCK_EX);
    }

    public function failed(\Throwable $e): void
    {
        file_put_contents((string) getenv('CONVEYOR_LARAVEL_SENT'), "failed {$this->number}: {$e->getMessage()}\n", FILE_APPEND | LOCK_EX);
    }
}
