<?php

declare(strict_types=1);

namespace Conveyor\Transport;

use Conveyor\Exception\Conflict;
use Conveyor\Exception\HttpError;
use Conveyor\Exception\NotFound;
use Conveyor\Exception\Unauthorized;
use Conveyor\Exception\Unavailable;
use Conveyor\Exception\ValidationFailed;
use Conveyor\Json;

/** JSON over HTTP to the scheduling center's API (php-curl), errors mapped to typed exceptions. */
final class Http
{
    public function __construct(
        private readonly string $baseUrl,
        private readonly ?string $token = null,
        private readonly float $timeout = 30.0,
    ) {
    }

    /** @return array<string, mixed> */
    public function get(string $path): array
    {
        return $this->request('GET', $path);
    }

    /** @return array<string, mixed> */
    public function post(string $path, mixed $body = null): array
    {
        return $this->request('POST', $path, $body);
    }

    /** @return array<string, mixed> */
    private function request(string $method, string $path, mixed $body = null): array
    {
        $curl = curl_init(rtrim($this->baseUrl, '/') . $path);
        $headers = ['Accept: application/json'];
        if ($this->token !== null && $this->token !== '') {
            $headers[] = 'Authorization: Bearer ' . $this->token;
        }
        $options = [CURLOPT_CUSTOMREQUEST => $method, CURLOPT_RETURNTRANSFER => true,
            CURLOPT_TIMEOUT_MS => (int) ($this->timeout * 1000), CURLOPT_CONNECTTIMEOUT_MS => 5000];
        if ($body !== null) {
            $options[CURLOPT_POSTFIELDS] = Json::encode($body);
            $headers[] = 'Content-Type: application/json';
        }
        $options[CURLOPT_HTTPHEADER] = $headers;
        curl_setopt_array($curl, $options);
        $raw = curl_exec($curl);
        $status = (int) curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
        $error = curl_error($curl);
        curl_close($curl);
        if ($raw === false || $status === 0) {
            throw new Unavailable("{$method} {$path}: no answer from {$this->baseUrl}: {$error}");
        }
        try {
            $data = $raw === '' ? [] : Json::decode((string) $raw);
        } catch (\JsonException) {
            $data = null;
        }
        if ($status >= 400 || !is_array($data)) {
            throw self::error($method, $path, $status, is_array($data) ? $data : []);
        }
        return $data;
    }

    /** @param array<string, mixed> $data */
    private static function error(string $method, string $path, int $status, array $data): \Throwable
    {
        $error = is_array($data['error'] ?? null) ? $data['error'] : [];
        $message = is_string($error['message'] ?? null) ? $error['message'] : "HTTP {$status}";
        $type = is_string($error['type'] ?? null) ? $error['type'] : 'http';
        $fields = is_array($error['fields'] ?? null) ? array_values(array_filter($error['fields'], 'is_string')) : [];
        $text = "{$method} {$path}: {$message}";
        return match (true) {
            $status === 404 => new NotFound($text, $status, $type, $fields),
            $status === 409 => new Conflict($text, $status, $type, $fields),
            $status === 401 => new Unauthorized($text, $status, $type, $fields),
            $status === 422 => new ValidationFailed($text, $fields),
            $status >= 500 => new Unavailable($text, $status),
            default => new HttpError($text, $status, $type, $fields),
        };
    }
}
