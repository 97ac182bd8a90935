<?php

declare(strict_types=1);

namespace Conveyor\Worker;

use Conveyor\Exception\Abort;
use Conveyor\Exception\Retry;
use Conveyor\Exception\ValidationFailed;
use Conveyor\Json;
use Conveyor\TaskContext;
use Conveyor\Validation;

/**
 * One attempt run in a child process (pcntl_fork): the worker keeps talking to the center
 * (lease renewals, heartbeats) while the handler runs, and can stop it at any moment, for a
 * timeout, a lost lease or a cancel, by killing the child's process group. The child sends its
 * outcome as one JSON document over a socket pair, then ends with SIGKILL so that nothing it
 * inherited (the AMQP connection above all) is closed or flushed from the child.
 */
final class Execution
{
    private string $buffer = '';
    private bool $finished = false;
    private ?int $status = null;
    private bool $killed = false;

    /** @param resource $pipe */
    private function __construct(private readonly int $pid, private $pipe)
    {
    }

    /** @param callable(array<string, mixed>, TaskContext): mixed $handler */
    public static function start(callable $handler, array $params, TaskContext $context): self
    {
        $pair = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);
        if ($pair === false) {
            throw new \RuntimeException('cannot create a socket pair for the handler process');
        }
        $pid = pcntl_fork();
        if ($pid === -1) {
            throw new \RuntimeException('cannot fork the handler process');
        }
        if ($pid === 0) {
            fclose($pair[0]);
            self::child($handler, $params, $context, $pair[1]);
        }
        fclose($pair[1]);
        stream_set_blocking($pair[0], false);
        return new self($pid, $pair[0]);
    }

    /** @param resource $out */
    private static function child(callable $handler, array $params, TaskContext $context, $out): never
    {
        posix_setpgid(0, 0); // its own group: a kill reaches whatever the handler started
        foreach ([SIGTERM, SIGINT, SIGHUP, SIGALRM] as $signal) {
            pcntl_signal($signal, SIG_DFL);
        }
        $sent = false;
        $send = static function (array $outcome) use ($out, &$sent): void {
            if ($sent) {
                return;
            }
            $sent = true;
            try {
                $json = Json::encode($outcome);
            } catch (\Throwable $e) {
                $json = Json::encode(['error' => ['type' => 'SerializationError',
                    'message' => 'the result is not JSON: ' . $e->getMessage(), 'traceback' => null], 'retry' => false]);
            }
            stream_set_blocking($out, true);
            for ($written = 0; $written < strlen($json);) {
                $n = fwrite($out, substr($json, $written));
                if ($n === false || $n === 0) {
                    break;
                }
                $written += $n;
            }
        };
        // exit(), a fatal error, or the end: report what is known, then die without running
        // destructors of objects inherited from the worker (its AMQP connection among them).
        register_shutdown_function(static function () use ($send): void {
            $error = error_get_last();
            $message = $error === null ? 'the handler exited the process' : "{$error['message']} in {$error['file']}:{$error['line']}";
            $send(['error' => ['type' => $error === null ? 'Exit' : 'FatalError', 'message' => $message, 'traceback' => null]]);
            posix_kill(posix_getpid(), SIGKILL);
        });
        try {
            $result = $handler($params, $context);
            try {
                Validation::json($result, 'result');
                $send(['result' => $result]);
            } catch (ValidationFailed $e) { // not retried: the same handler would return the same
                $send(['error' => ['type' => 'SerializationError', 'message' => $e->getMessage(), 'traceback' => null],
                    'retry' => false]);
            }
        } catch (Retry $e) {
            $send(['error' => self::error($e), 'retry_delay_s' => $e->delaySeconds]);
        } catch (Abort $e) {
            $send(['error' => self::error($e), 'retry' => false]);
        } catch (\Throwable $e) {
            $send(['error' => self::error($e)]);
        }
        exit(0);
    }

    /** @return array{type: string, message: string, traceback: string} */
    private static function error(\Throwable $e): array
    {
        $short = (new \ReflectionClass($e))->getShortName();
        return ['type' => $e instanceof Retry || $e instanceof Abort ? $short : get_class($e),
            'message' => $e->getMessage(), 'traceback' => (string) $e];
    }

    /** Wait up to $seconds for the child; true once it has finished and been reaped. */
    public function poll(float $seconds): bool
    {
        if ($this->finished) {
            return true;
        }
        $read = [$this->pipe];
        $write = $except = null;
        $ready = @stream_select($read, $write, $except, (int) $seconds, (int) (fmod($seconds, 1.0) * 1e6));
        if ($ready) {
            while (($chunk = fread($this->pipe, 65536)) !== false && $chunk !== '') {
                $this->buffer .= $chunk;
            }
        }
        if (feof($this->pipe)) {
            $this->reap();
        }
        return $this->finished;
    }

    /** Kill the handler's process group and reap it. */
    public function kill(): void
    {
        if (!$this->finished) {
            $this->killed = true;
            @posix_kill(-$this->pid, SIGKILL);
            @posix_kill($this->pid, SIGKILL);
            $this->reap();
        }
    }

    private function reap(): void
    {
        pcntl_waitpid($this->pid, $status);
        $this->status = $status;
        $this->finished = true;
        fclose($this->pipe);
    }

    /** The outcome the child sent, or a failure saying how its process ended without one. */
    public function outcome(): Outcome
    {
        // Objects stay objects (stdClass): a result of {} must not come back as [].
        $data = $this->buffer === '' ? null : json_decode($this->buffer, false, 512);
        if (!$data instanceof \stdClass) {
            $how = $this->status !== null && pcntl_wifsignaled($this->status)
                ? 'was killed by signal ' . pcntl_wtermsig($this->status)
                : 'exited with status ' . ($this->status === null ? '?' : pcntl_wexitstatus($this->status));
            return Outcome::failed('WorkerLost', "the handler's process {$how} before reporting an outcome", null);
        }
        if (!property_exists($data, 'error')) {
            return Outcome::succeeded($data->result ?? null);
        }
        $error = $data->error;
        return Outcome::failed((string) $error->type, (string) $error->message,
            isset($error->traceback) ? (string) $error->traceback : null, (bool) ($data->retry ?? true),
            isset($data->retry_delay_s) ? (float) $data->retry_delay_s : null);
    }

    public function wasKilled(): bool
    {
        return $this->killed;
    }
}
