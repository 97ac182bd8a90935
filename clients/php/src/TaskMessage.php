<?php

declare(strict_types=1);

namespace Conveyor;

use Conveyor\Exception\InvalidMessage;
use Conveyor\Exception\ValidationFailed;

/**
 * One delivery of one attempt of one task: the JSON body of docs/protocol.md §2, decoded and
 * checked against protocol/task-message.schema.json (with its bounds). Unknown fields are ignored.
 */
final class TaskMessage
{
    public const PROTOCOL = 1;
    public const MAX_BYTES = 1048576;

    /**
     * @param array<string, mixed> $params
     * @param array<string, string> $trace
     */
    public function __construct(
        public readonly string $id,
        public readonly string $type,
        public readonly array $params,
        public readonly string $queue,
        public readonly int $priority = 0,
        public readonly int $attempt = 1,
        public readonly int $maxAttempts = 3,
        public readonly ?float $timeout = null,
        public readonly ?string $eta = null,
        public readonly array $trace = [],
    ) {
    }

    /** Decode and validate a body; throws InvalidMessage saying what is wrong. */
    public static function fromBody(string $body): self
    {
        if (strlen($body) > self::MAX_BYTES) {
            throw new InvalidMessage(sprintf('message is %d bytes; the limit is %d', strlen($body), self::MAX_BYTES));
        }
        try {
            $data = Json::decode($body);
        } catch (\JsonException $e) {
            throw new InvalidMessage('body is not JSON: ' . $e->getMessage(), 0, $e);
        }
        if (!is_array($data) || !str_starts_with(ltrim($body), '{')) {
            throw new InvalidMessage('body must be a JSON object');
        }
        try {
            return self::fromArray($data, $body);
        } catch (ValidationFailed $e) {
            throw new InvalidMessage('invalid task message: ' . $e->getMessage(), 0, $e);
        }
    }

    /** @param array<string, mixed> $data */
    private static function fromArray(array $data, string $body): self
    {
        foreach (['protocol', 'id', 'type', 'params', 'queue'] as $required) {
            if (!array_key_exists($required, $data)) {
                throw new ValidationFailed("missing field '{$required}'", [$required]);
            }
        }
        if ($data['protocol'] !== self::PROTOCOL) {
            throw new ValidationFailed('unsupported protocol version ' . json_encode($data['protocol']), ['protocol']);
        }
        if (!is_string($data['id']) || !Uuid::isValid($data['id'])) {
            throw new ValidationFailed('id must be a UUID string (8-4-4-4-12 hex)', ['id']);
        }
        $params = self::object($data['params'], 'params', $body);
        Validation::json($params, 'params');
        $eta = $data['eta'] ?? null;
        if ($eta !== null) {
            Validation::instant($eta, 'eta');
        }
        $trace = $data['trace'] ?? [];
        if (!is_array($trace) || array_filter($trace, static fn ($v): bool => !is_string($v)) !== []
            || ($trace !== [] && array_is_list($trace))) {
            throw new ValidationFailed('trace must be a JSON object of strings', ['trace']);
        }
        // flow (§10) is the center's business, not the worker's, but a body the schema refuses is
        // dead-lettered here too: an object (or null) with no NUL, as it is stored with the task.
        $flow = $data['flow'] ?? null;
        if ($flow !== null) {
            Validation::json(self::object($flow, 'flow', $body), 'flow');
        }
        $timeout = $data['timeout'] ?? null;
        return new self(
            id: strtolower($data['id']),
            type: Validation::type($data['type']),
            params: $params,
            queue: Validation::queue($data['queue']),
            priority: Validation::int($data['priority'] ?? 0, 'priority', 0, Validation::MAX_PRIORITY),
            attempt: Validation::int($data['attempt'] ?? 1, 'attempt', 1, Validation::MAX_ATTEMPTS),
            maxAttempts: Validation::int($data['max_attempts'] ?? 3, 'max_attempts', 1, Validation::MAX_ATTEMPTS),
            timeout: $timeout === null ? null : Validation::seconds($timeout, 'timeout', Validation::MAX_TIMEOUT_S, true),
            eta: $eta,
            trace: $trace,
        );
    }

    /**
     * A JSON object as an array. Decoded to arrays, `{}` and `[]` look alike: a list, or an empty
     * one written as `[]` in the body, is refused.
     *
     * @return array<string, mixed>
     */
    private static function object(mixed $value, string $field, string $body): array
    {
        if (!is_array($value) || ($value !== [] && array_is_list($value))
            || ($value === [] && preg_match('/"' . $field . '"\s*:\s*\[/', $body) === 1)) {
            throw new ValidationFailed("{$field} must be a JSON object", [$field]);
        }
        return $value;
    }

    /** The message as the wire wants it (params and trace always objects). */
    public function toArray(): array
    {
        return [
            'protocol' => self::PROTOCOL, 'id' => $this->id, 'type' => $this->type,
            'params' => (object) $this->params, 'queue' => $this->queue, 'priority' => $this->priority,
            'attempt' => $this->attempt, 'max_attempts' => $this->maxAttempts, 'timeout' => $this->timeout,
            'eta' => $this->eta, 'trace' => (object) $this->trace,
        ];
    }

    public function encode(): string
    {
        return Json::encode($this->toArray());
    }
}
