<?php

declare(strict_types=1);

namespace Conveyor\Worker;

/** How one attempt ended, as the worker reports it. */
final class Outcome
{
    public const SUCCEEDED = 'succeeded';
    public const FAILED = 'failed';         // throw, timeout, or the handler's process died: retried if allowed
    public const STOPPED = 'stopped';       // the center said stop (lease lost, cancelled): nothing to report
    public const INTERRUPTED = 'interrupted'; // worker shutdown: the attempt is given back

    /**
     * @param array{type: string, message: string, traceback: string|null}|null $error
     */
    private function __construct(
        public readonly string $kind,
        public readonly mixed $result = null,
        public readonly ?array $error = null,
        public readonly bool $retry = true,
        public readonly ?float $retryDelay = null,
        public readonly string $reason = '',
    ) {
    }

    public static function succeeded(mixed $result): self
    {
        return new self(self::SUCCEEDED, $result);
    }

    public static function failed(string $type, string $message, ?string $traceback, bool $retry = true,
                                  ?float $retryDelay = null): self
    {
        return new self(self::FAILED, null, ['type' => $type, 'message' => $message, 'traceback' => $traceback],
            $retry, $retryDelay);
    }

    public static function stopped(string $reason): self
    {
        return new self(self::STOPPED, reason: $reason);
    }

    public static function interrupted(): self
    {
        return new self(self::INTERRUPTED, reason: 'worker shutting down');
    }
}
