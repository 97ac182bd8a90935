"""Worker reports: how a worker that does not write the store (one in another language) tells
the scheduling center what happened to a task. See docs/protocol.md, "Acting as a worker".

A foreign worker consumes task messages like Conveyor's own workers, then publishes report
messages (JSON, protocol/report-message.schema.json) to the logical queue ``_reports``. The
center's ``ReportConsumer`` applies each one to the store with compare-and-set, following
``model.TRANSITIONS``, and acks it only after the write:

- ``running``   starts the attempt (status running, a store lease); repeated, it renews the lease.
- ``succeeded`` stores the result (starting the attempt first if no ``running`` came).
- ``failed``    -> ``retrying`` plus a delayed task message for the next attempt while attempts
                remain and the report allows it, else ``failed``.
- ``heartbeat`` (``kind``) registers the node, so it is listed with Conveyor's own nodes.

Reports are delivered at least once and may come late: one for a finished task, or for an
attempt other than the task's current one, changes nothing. Malformed reports and reports for
task ids the store never saw are dead-lettered by the consumer with the reason.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from conveyor import message
from conveyor.broker.base import Consumer, Delivery
from conveyor.errors import ConcurrentUpdate, ConveyorError, SerializationError, TaskNotFound
from conveyor.message import MAX_MESSAGE_BYTES, PROTOCOL_VERSION
from conveyor.model import JSON, NodeInfo, Task, TaskStatus, iso, now, parse_iso
from conveyor.retry import backoff_s
from conveyor.service import TaskService, publish_tasks
from conveyor.task import TaskOptions

log = logging.getLogger(__name__)

REPORTS_QUEUE = "_reports"  # a leading underscore marks a queue reserved for Conveyor
MAX_NODE_LENGTH = 200
_REPORTED = frozenset({TaskStatus.RUNNING, TaskStatus.SUCCEEDED, TaskStatus.FAILED})
_CAS_TRIES = 10


@dataclass(frozen=True, slots=True)
class TaskReport:
    """What one attempt of a task did, as told by the node running it."""

    id: uuid.UUID
    attempt: int
    node: str
    status: TaskStatus  # running | succeeded | failed
    at: float  # when it happened, on the node's clock
    result: JSON = None
    error: dict[str, Any] | None = None  # {"type", "message", "traceback"}
    retry: bool = True  # False: fail now even if attempts remain
    retry_delay_s: float | None = None  # None: the task type's backoff


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A foreign node saying it is alive (kind "heartbeat")."""

    node: str
    queues: tuple[str, ...]
    concurrency: int
    in_flight: int
    done: int
    status: str = "live"  # live | stopped
    host: str | None = None
    pid: int | None = None
    started_at: float | None = None


Report = TaskReport | Heartbeat


# -- codec --------------------------------------------------------------------------------------
def encode(report: Report) -> bytes:
    """The JSON body of a report (what a foreign worker publishes; used by tests and bridges)."""
    if isinstance(report, Heartbeat):
        data: dict[str, Any] = {
            "protocol": PROTOCOL_VERSION, "kind": "heartbeat", "node": report.node,
            "queues": list(report.queues), "concurrency": report.concurrency,
            "in_flight": report.in_flight, "done": report.done, "status": report.status,
        }
        optional = {"host": report.host, "pid": report.pid, "started_at": iso(report.started_at)}
        data.update({k: v for k, v in optional.items() if v is not None})
        return message.dumps(data)
    data = {
        "protocol": PROTOCOL_VERSION, "id": str(report.id), "attempt": report.attempt,
        "node": report.node, "status": report.status.value, "at": iso(report.at),
    }
    if report.status is TaskStatus.SUCCEEDED:
        data["result"] = report.result
    if report.error is not None:
        data["error"] = report.error
    if report.status is TaskStatus.FAILED:
        data["retry"] = report.retry
        if report.retry_delay_s is not None:
            data["retry_delay_s"] = report.retry_delay_s
    return message.dumps(data)


def decode(body: bytes) -> Report:
    """Parse and validate a report body; raise SerializationError saying what is wrong.
    Checks what protocol/report-message.schema.json says (unknown fields are ignored)."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise SerializationError(f"report is {len(body)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    data = message.loads(body)
    if not isinstance(data, dict):
        raise SerializationError("report must be a JSON object")
    try:
        if data.get("protocol") != PROTOCOL_VERSION:
            raise ValueError(f"'protocol' must be {PROTOCOL_VERSION}")
        kind = data.get("kind", "task")
        if kind == "heartbeat":
            return _heartbeat(data)
        if kind != "task":
            raise ValueError(f"unknown report kind {kind!r}")
        return _task_report(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise SerializationError(f"invalid report: {exc}") from exc


def _task_report(data: dict[str, Any]) -> TaskReport:
    status = TaskStatus(_str(data, "status"))
    if status not in _REPORTED:
        raise ValueError("'status' must be running, succeeded or failed")
    error = data.get("error")
    if error is not None:
        error = _error(error)
    elif status is TaskStatus.FAILED:
        raise ValueError("a failed report needs 'error'")
    retry = data.get("retry", True)
    if not isinstance(retry, bool):
        raise ValueError("'retry' must be true or false")
    delay = data.get("retry_delay_s")
    if delay is not None and (not _is_number(delay) or delay < 0):
        raise ValueError("'retry_delay_s' must be a number >= 0")
    return TaskReport(
        id=uuid.UUID(_str(data, "id")), attempt=_int(data, "attempt", minimum=1), node=_node(data),
        status=status, at=_time(data, "at"), result=data.get("result"), error=error, retry=retry,
        retry_delay_s=float(delay) if delay is not None else None,
    )


def _heartbeat(data: dict[str, Any]) -> Heartbeat:
    queues = data["queues"]
    if not isinstance(queues, list) or not all(isinstance(q, str) and q for q in queues):
        raise ValueError("'queues' must be a list of queue names")
    status = data.get("status", "live")
    if status not in ("live", "stopped"):
        raise ValueError("'status' must be live or stopped")
    host, pid = data.get("host"), data.get("pid")
    if host is not None and not isinstance(host, str):
        raise ValueError("'host' must be a string")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool)):
        raise ValueError("'pid' must be an integer")
    return Heartbeat(
        node=_node(data), queues=tuple(queues), concurrency=_int(data, "concurrency", minimum=1),
        in_flight=_int(data, "in_flight", minimum=0), done=_int(data, "done", minimum=0), status=status,
        host=host, pid=pid, started_at=_time(data, "started_at") if "started_at" in data else None,
    )


def _str(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} must be a non-empty string")
    return value


def _node(data: dict[str, Any]) -> str:
    node = _str(data, "node")
    if len(node) > MAX_NODE_LENGTH:
        raise ValueError(f"'node' must be at most {MAX_NODE_LENGTH} characters")
    return node


def _int(data: dict[str, Any], key: str, *, minimum: int) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{key!r} must be an integer >= {minimum}")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _time(data: dict[str, Any], key: str) -> float:
    value = parse_iso(_str(data, key))
    assert value is not None
    return value


def _error(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("'error' must be an object")
    kind, text, trace = value.get("type"), value.get("message"), value.get("traceback")
    if not isinstance(kind, str) or not kind or not isinstance(text, str):
        raise ValueError("'error' needs a non-empty 'type' and a 'message' string")
    if trace is not None and not isinstance(trace, str):
        raise ValueError("'error.traceback' must be a string or null")
    return {"type": kind, "message": text, "traceback": trace}


# -- applying reports ---------------------------------------------------------------------------
def apply_report(service: TaskService, body: bytes, *, lease_s: float) -> str:
    """Apply one report body to the store; return what happened, in a few words.

    Raises SerializationError for a malformed body, TaskNotFound for an id the store never
    saw, and StoreError/BrokerError when the write or a retry's publish failed (try again)."""
    report = decode(body)
    if isinstance(report, Heartbeat):
        record_heartbeat(service, report)
        return f"heartbeat from {report.node}"
    for _ in range(_CAS_TRIES):
        task = service.store.get(report.id)
        try:
            return _apply(service, task, report, lease_s=lease_s)
        except ConcurrentUpdate:
            continue  # someone else wrote the task first: read it again and re-decide
    raise ConcurrentUpdate(report.id)


def _apply(service: TaskService, task: Task, report: TaskReport, *, lease_s: float) -> str:
    if task.status.is_final:
        return f"ignored: task already {task.status.value}"
    if (task.status is TaskStatus.RETRYING and report.status is TaskStatus.FAILED
            and report.attempt == task.attempts):
        # A redelivered failed report: the retry message may have been lost with its publish.
        publish_tasks(service.broker, [task])
        return f"duplicate failed report: retry message for attempt {task.attempts + 1} published again"
    running = task.status is TaskStatus.RUNNING
    current = task.attempts if running else task.attempts + 1
    if report.attempt != current:
        return (f"ignored: report for attempt {report.attempt}, task is {task.status.value}"
                f" after attempt {task.attempts}")
    if report.status is TaskStatus.RUNNING:
        return _running(service, task, report, lease_s=lease_s)
    if not running:  # no running report came (or it is still on its way): start the attempt here
        task = _start(service, task, report, lease_s=lease_s)
    finished_at = max(report.at, task.started_at or report.at)
    if report.status is TaskStatus.SUCCEEDED:
        service.store.update(task, TaskStatus.SUCCEEDED, node=report.node, result=report.result, error=None,
                             finished_at=finished_at, lease_until=None, detail=f"reported by {report.node}")
        return "succeeded"
    return _failed(service, task, report, finished_at)


def _running(service: TaskService, task: Task, report: TaskReport, *, lease_s: float) -> str:
    if task.status is not TaskStatus.RUNNING:
        _start(service, task, report, lease_s=lease_s)
        return f"running attempt {report.attempt} on {report.node}"
    if task.node == report.node:
        service.store.renew_leases([(task.id, task.attempts)], report.node, lease_s)
        return "lease renewed"
    if task.lease_until is not None and task.lease_until > now():
        return f"ignored: attempt {report.attempt} runs on {task.node} (lease live)"
    service.store.update(task, None, node=report.node, lease_until=now() + lease_s)
    return f"taken over from {task.node}"


def _start(service: TaskService, task: Task, report: TaskReport, *, lease_s: float) -> Task:
    return service.store.update(
        task, TaskStatus.RUNNING, node=report.node, detail=f"attempt {report.attempt} (reported)",
        attempts=report.attempt, started_at=report.at, lease_until=now() + lease_s, finished_at=None,
        queued_at=task.queued_at or report.at,
    )


def _failed(service: TaskService, task: Task, report: TaskReport, finished_at: float) -> str:
    error = report.error or {"type": "error", "message": "failed", "traceback": None}
    if report.retry and task.attempts < task.max_attempts:
        spec = service.registry.find(task.type)
        delay = report.retry_delay_s
        if delay is None:
            delay = backoff_s(task.attempts, spec.options if spec else TaskOptions())
        updated = service.store.update(
            task, TaskStatus.RETRYING, node=report.node, error=error, eta=now() + delay, lease_until=None,
            detail=f"{error['type']}: retry in {delay:.2f} s (reported)", publish=True,
        )
        service.publisher.send([updated])  # due at its eta; the outbox intent covers a crash
        log.warning("task %s attempt %d failed on %s (%s); retrying in %.2f s", task.id, task.attempts,
                    report.node, error["message"], delay, extra=_extra(task, report, "retry"))
        return f"retrying in {delay:.2f} s"
    service.store.update(task, TaskStatus.FAILED, node=report.node, error=error, finished_at=finished_at,
                         lease_until=None, detail=f"{error['type']} (reported)")
    log.error("task %s failed after %d attempt(s) on %s: %s", task.id, task.attempts, report.node,
              error["message"], extra=_extra(task, report, "failed"))
    return "failed"


def record_heartbeat(service: TaskService, beat: Heartbeat) -> None:
    """Register or refresh the node. ``last_heartbeat`` is the center's clock: liveness is
    judged against it, so a node's clock skew cannot keep it alive."""
    started_at = beat.started_at
    if started_at is None:
        known = next((n for n in service.store.nodes() if n.id == beat.node), None)
        started_at = known.started_at if known else now()
    service.store.upsert_node(NodeInfo(
        id=beat.node, host=beat.host or "unknown", pid=beat.pid or 0, queues=beat.queues,
        concurrency=beat.concurrency, started_at=started_at, last_heartbeat=now(), status=beat.status,
        in_flight=beat.in_flight, done=beat.done,
    ))


def _extra(task: Task, report: TaskReport, action: str) -> dict[str, str]:
    return {"task_id": str(task.id), "queue": task.queue, "worker": report.node, "action": action}


# -- the consumer -------------------------------------------------------------------------------
class ReportConsumer:
    """A thread that consumes ``_reports`` and applies each report; acks after the store write,
    dead-letters malformed reports and reports for unknown tasks, and hands back (after a
    pause) reports it could not apply because the store or broker failed."""

    def __init__(self, service: TaskService, *, lease_s: float, prefetch: int = 32,
                 retry_pause_s: float = 1.0) -> None:
        self.service = service
        self.lease_s = lease_s
        self.prefetch = prefetch
        self.retry_pause_s = retry_pause_s
        self.applied = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

    def start(self) -> None:
        broker = self.service.broker
        broker.declare_queue(REPORTS_QUEUE)
        self._consumer = broker.consume([REPORTS_QUEUE], prefetch=self.prefetch)
        self._thread = threading.Thread(target=self._loop, name="conveyor-reports", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._consumer is not None:
            self._consumer.close()

    def _loop(self) -> None:
        assert self._consumer is not None
        while not self._stopping.is_set():
            try:
                delivery = self._consumer.get(timeout_s=0.2)
            except ConveyorError as exc:
                log.warning("consuming reports failed: %s", exc)
                self._stopping.wait(self.retry_pause_s)
                continue
            if delivery is not None:
                self.handle(delivery)

    def handle(self, delivery: Delivery) -> None:
        """Apply one delivered report and settle the delivery accordingly."""
        try:
            outcome = apply_report(self.service, delivery.body, lease_s=self.lease_s)
        except SerializationError as exc:
            log.error("dead-lettering a malformed report: %s", exc, extra={"action": "dead_letter"})
            delivery.dead_letter(f"malformed report: {exc}")
            return
        except TaskNotFound as exc:
            log.error("dead-lettering a report for unknown task %s", exc.task_id,
                      extra={"action": "dead_letter"})
            delivery.dead_letter(f"report for unknown task id {exc.task_id}")
            return
        except ConveyorError as exc:  # store or broker trouble: apply it again later
            log.warning("could not apply a report (%s); retrying in %.1f s", exc, self.retry_pause_s)
            delivery.nack(requeue=True, delay_s=self.retry_pause_s)
            return
        delivery.ack()
        self.applied += 1
        log.debug("report applied: %s", outcome)

