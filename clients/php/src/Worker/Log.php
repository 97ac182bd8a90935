<?php

declare(strict_types=1);

namespace Conveyor\Worker;

/** One line per event on STDERR: time, level, node, message. */
final class Log
{
    private const LEVELS = ['debug' => 10, 'info' => 20, 'warning' => 30, 'error' => 40];

    public function __construct(private readonly string $node = '-', private readonly string $level = 'info')
    {
    }

    public function withNode(string $node): self
    {
        return new self($node, $this->level);
    }

    public function debug(string $message): void
    {
        $this->write('debug', $message);
    }

    public function info(string $message): void
    {
        $this->write('info', $message);
    }

    public function warning(string $message): void
    {
        $this->write('warning', $message);
    }

    public function error(string $message): void
    {
        $this->write('error', $message);
    }

    private function write(string $level, string $message): void
    {
        if (self::LEVELS[$level] < (self::LEVELS[strtolower($this->level)] ?? 20)) {
            return;
        }
        $time = \DateTimeImmutable::createFromFormat('U.u', sprintf('%.6F', microtime(true)));
        $stamp = $time === false ? gmdate('c') : $time->format('Y-m-d\TH:i:s.v\Z');
        fwrite(STDERR, sprintf("%s %-7s %s %s\n", $stamp, strtoupper($level), $this->node, $message));
    }
}
