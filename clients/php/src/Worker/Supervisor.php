<?php

declare(strict_types=1);

namespace Conveyor\Worker;

/**
 * `--concurrency N`: N worker processes (each one node, one task at a time), restarted when one
 * dies, all told to stop (SIGTERM, each gets its grace period) when the supervisor is.
 */
final class Supervisor
{
    /** @var array<int, int> pid => slot */
    private array $children = [];
    private bool $stopping = false;

    /** @param callable(int): int $runSlot runs one worker process for slot i; returns its exit code */
    public function __construct(private readonly int $processes, private $runSlot, private readonly Log $log)
    {
    }

    public function run(): int
    {
        pcntl_async_signals(true);
        $stop = function (): void {
            $this->stopping = true;
            foreach (array_keys($this->children) as $pid) {
                posix_kill($pid, SIGTERM);
            }
        };
        // No restarted system calls: a blocking wait must return for the handler to run.
        pcntl_signal(SIGTERM, $stop, false);
        pcntl_signal(SIGINT, $stop, false);
        for ($slot = 0; $slot < $this->processes; $slot++) {
            $this->spawn($slot);
        }
        while ($this->children !== []) {
            $pid = pcntl_wait($status);
            if ($pid <= 0) {
                continue; // interrupted by a signal
            }
            $slot = $this->children[$pid] ?? null;
            unset($this->children[$pid]);
            if ($slot !== null && !$this->stopping) {
                $this->log->warning("worker process {$pid} (slot {$slot}) exited unexpectedly; restarting it in 1 s");
                sleep(1);
                if (!$this->stopping) {
                    $this->spawn($slot);
                }
            }
        }
        return 0;
    }

    private function spawn(int $slot): void
    {
        $pid = pcntl_fork();
        if ($pid === -1) {
            throw new \RuntimeException('cannot fork a worker process');
        }
        if ($pid === 0) {
            pcntl_signal(SIGTERM, SIG_DFL);
            pcntl_signal(SIGINT, SIG_DFL);
            exit(($this->runSlot)($slot));
        }
        $this->children[$pid] = $slot;
    }
}
