"""Worker reports: how a worker that does not write the store (one in another language) tells
the scheduling center what happened to a task. See docs/protocol.md, "Acting as a worker".

A foreign worker consumes task messages like Conveyor's own workers, claims each delivery
(``conveyor.foreign``), then publishes report messages (JSON,
protocol/report-message.schema.json) to the logical queue ``_reports``. The center applies
each one to the store with compare-and-set, following ``model.TRANSITIONS``, and acks it only
after the write:

- ``running``   renews the lease of the attempt the node owns (the first one, without a claim,
                starts the attempt: the protocol's older, claim-less flow).
- ``succeeded`` stores the result (starting the attempt first if it never started).
- ``failed``    -> ``retrying`` plus a delayed task message for the next attempt while attempts
                remain and the report allows it, else ``failed``.
- ``heartbeat`` (``kind``) registers the node, so it is listed with Conveyor's own nodes.
- ``claim``     (``kind``) asks whether a delivery may run: ``conveyor.foreign``.

Writes are fenced: only the node that owns the running attempt (same node, same attempt) can
renew or finish it. Reports are delivered at least once and may come late: one for a finished
task, a superseded attempt, or an attempt another node owns changes nothing, and is *answered*
with ``stop`` when it carries an AMQP ``reply_to`` (or came over HTTP): that is how a worker
learns it lost its lease, or that its task was cancelled. Malformed reports and reports for task
ids the store never saw are dead-lettered by the consumer with the reason.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from conveyor import message, validation
from conveyor.broker.base import Consumer, Delivery
from conveyor.config import Settings
from conveyor.errors import ConcurrentUpdate, ConveyorError, SerializationError, TaskNotFound
from conveyor.foreign import ClaimAnswer, ClaimRequest, LeaseTerms, claim, decode_claim
from conveyor.message import MAX_MESSAGE_BYTES, PROTOCOL_VERSION
from conveyor.model import JSON, NodeInfo, Task, TaskStatus, iso, parse_iso
from conveyor.retry import backoff_s
from conveyor.service import TaskService, publish_tasks
from conveyor.task import TaskOptions

log = logging.getLogger(__name__)

REPORTS_QUEUE = "_reports"  # a leading underscore marks a queue reserved for Conveyor
MAX_NODE_LENGTH = validation.MAX_NODE_LENGTH
_REPORTED = frozenset({TaskStatus.RUNNING, TaskStatus.SUCCEEDED, TaskStatus.FAILED})
# "returned": the node gives the attempt back on shutdown (it does not count); held as QUEUED.
RETURNED = "returned"
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
    republish: bool = False  # returned: the node acked its delivery early, so publish the task again

    @property
    def wire_status(self) -> str:
        return RETURNED if self.status is TaskStatus.QUEUED else self.status.value


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


Report = TaskReport | Heartbeat | ClaimRequest


@dataclass(frozen=True, slots=True)
class ReportAnswer:
    """The center's answer to a task report. ``stop`` tells the node to stop working on this
    attempt: it is not (or no longer) the attempt's owner, or the task is finished/cancelled."""

    id: uuid.UUID
    attempt: int
    status: str  # the reported status, as on the wire
    applied: bool
    reason: str
    task_status: TaskStatus | None = None  # the task's status after the report

    @property
    def stop(self) -> bool:
        return not self.applied

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL_VERSION, "kind": "report", "id": str(self.id), "attempt": self.attempt,
            "status": self.status, "applied": self.applied, "stop": self.stop, "reason": self.reason,
            "task_status": self.task_status.value if self.task_status else None,
        }


@dataclass(frozen=True, slots=True)
class HeartbeatAnswer:
    node: str
    terms: LeaseTerms

    @property
    def reason(self) -> str:
        return f"heartbeat from {self.node}"

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": PROTOCOL_VERSION, "kind": "heartbeat", "node": self.node, "applied": True,
                **self.terms.to_dict()}


Answer = ReportAnswer | HeartbeatAnswer | ClaimAnswer


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
    if isinstance(report, ClaimRequest):
        data = {"protocol": PROTOCOL_VERSION, "kind": "claim", "id": str(report.id), "attempt": report.attempt,
                "node": report.node}
        if report.queue is not None:
            data["queue"] = report.queue
        if report.message is not None:
            data["message"] = message.loads(message.encode(report.message))
        return message.dumps(data)
    data = {
        "protocol": PROTOCOL_VERSION, "id": str(report.id), "attempt": report.attempt,
        "node": report.node, "status": report.wire_status, "at": iso(report.at),
    }
    if report.status is TaskStatus.QUEUED:
        data["republish"] = report.republish
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
    return decode_object(data, nul_possible=validation.may_hold_nul(body))


def decode_object(data: dict[str, Any], *, nul_possible: bool = True) -> Report:
    """``decode`` for a parsed JSON object (the HTTP API's body)."""
    try:
        if data.get("protocol") != PROTOCOL_VERSION or isinstance(data.get("protocol"), bool):
            raise ValueError(f"'protocol' must be {PROTOCOL_VERSION}")
        kind = data.get("kind", "task")
        if kind == "heartbeat":
            return _heartbeat(data)
        if kind == "claim":
            return decode_claim(data)
        if kind != "task":
            raise ValueError(f"unknown report kind {kind!r}")
        report = _task_report(data)
        if nul_possible:
            validation.check_json(report.result, "result")
        return report
    except (KeyError, TypeError, ValueError) as exc:
        raise SerializationError(f"invalid report: {exc}") from exc


def _task_report(data: dict[str, Any]) -> TaskReport:
    text = _str(data, "status")
    status = TaskStatus.QUEUED if text == RETURNED else TaskStatus(text) if text in _REPORTED else None
    if status is None:
        raise ValueError("'status' must be running, succeeded, failed or returned")
    republish = data.get("republish", False)
    if not isinstance(republish, bool):
        raise ValueError("'republish' must be true or false")
    error = data.get("error")
    if error is not None:
        error = _error(error)
    elif status is TaskStatus.FAILED:
        raise ValueError("a failed report needs 'error'")
    retry = data.get("retry", True)
    if not isinstance(retry, bool):
        raise ValueError("'retry' must be true or false")
    delay = data.get("retry_delay_s")
    if delay is not None:
        delay = validation.check_delay(delay, "'retry_delay_s'")
    return TaskReport(
        id=_uuid(data), attempt=validation.check_attempt(data["attempt"], "'attempt'"), node=_node(data),
        status=status, at=_time(data, "at"), result=data.get("result"), error=error, retry=retry,
        retry_delay_s=float(delay) if delay is not None else None, republish=republish,
    )


def _heartbeat(data: dict[str, Any]) -> Heartbeat:
    queues = data["queues"]
    if not isinstance(queues, list):
        raise ValueError("'queues' must be a list of queue names")
    for queue in queues:
        validation.check_text(queue, "'queues'", max_length=validation.MAX_QUEUE_LENGTH)
    status = data.get("status", "live")
    if status not in ("live", "stopped"):
        raise ValueError("'status' must be live or stopped")
    host, pid = data.get("host"), data.get("pid")
    if host is not None:
        validation.check_text(host, "'host'", max_length=validation.MAX_NODE_LENGTH, allow_empty=True)
    if pid is not None:
        validation.check_int(pid, "'pid'", 0, 2**31 - 1)
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


def _uuid(data: dict[str, Any]) -> uuid.UUID:
    value = data["id"]
    if not isinstance(value, str) or not message.UUID_TEXT.fullmatch(value):
        raise ValueError("'id' must be a UUID string (8-4-4-4-12 hex)")
    return uuid.UUID(value)


def _node(data: dict[str, Any]) -> str:
    return validation.check_text(data["node"], "'node'", max_length=MAX_NODE_LENGTH)


_COUNTER_MAX = 2**31 - 1  # the node registry's integer columns


def _int(data: dict[str, Any], key: str, *, minimum: int) -> int:
    return validation.check_int(data[key], repr(key), minimum, _COUNTER_MAX)


def _time(data: dict[str, Any], key: str) -> float:
    text = _str(data, key)
    if not _INSTANT.fullmatch(text):
        raise ValueError(f"{key!r} must be an ISO-8601 instant with Z or an offset")
    value = validation.check_eta(parse_iso(text))
    assert value is not None
    return value


_INSTANT = re.compile(validation.INSTANT_PATTERN)


def _error(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("'error' must be an object")
    kind, text, trace = value.get("type"), value.get("message"), value.get("traceback")
    if not isinstance(kind, str) or not kind or not isinstance(text, str):
        raise ValueError("'error' needs a non-empty 'type' and a 'message' string")
    if trace is not None and not isinstance(trace, str):
        raise ValueError("'error.traceback' must be a string or null")
    validation.check_text(kind, "'error.type'", max_length=validation.MAX_TYPE_LENGTH)
    validation.check_text(text, "'error.message'", allow_empty=True)
    if trace is not None:
        validation.check_text(trace, "'error.traceback'", allow_empty=True)
    return {"type": kind, "message": text, "traceback": trace}


# -- applying reports ---------------------------------------------------------------------------
def answer(service: TaskService, report: Report, terms: LeaseTerms) -> Answer:
    """Apply one decoded report (or decide one claim) and say what happened.

    Raises TaskNotFound for a task report about an id the store never saw, and
    StoreError/BrokerError when the write or a retry's publish failed (try again)."""
    if isinstance(report, Heartbeat):
        record_heartbeat(service, report)
        return HeartbeatAnswer(report.node, terms)
    if isinstance(report, ClaimRequest):
        return claim(service, report, terms)
    for _ in range(_CAS_TRIES):
        task = service.store.get(report.id)
        try:
            return _apply(service, task, report, terms)
        except ConcurrentUpdate:
            continue  # someone else wrote the task first: read it again and re-decide
    raise ConcurrentUpdate(report.id)


def apply_report(service: TaskService, body: bytes, *, lease_s: float) -> str:
    """Apply one report body to the store; return what happened, in a few words.

    Raises SerializationError for a malformed body, TaskNotFound for an id the store never
    saw, and StoreError/BrokerError when the write or a retry's publish failed (try again)."""
    return answer(service, decode(body), LeaseTerms(lease_s=lease_s)).reason


def _apply(service: TaskService, task: Task, report: TaskReport, terms: LeaseTerms) -> ReportAnswer:
    if task.status.is_final:
        return _ignored(report, task, f"task already {task.status.value}")
    if (task.status is TaskStatus.RETRYING and report.status is TaskStatus.FAILED
            and report.attempt == task.attempts):
        # A redelivered failed report: the retry message may have been lost with its publish.
        publish_tasks(service.broker, [task])
        return _applied(report, task, f"duplicate failed report: retry message for attempt {task.attempts + 1}"
                                      " published again")
    running = task.status is TaskStatus.RUNNING
    if report.attempt <= task.attempts and not (running and report.attempt == task.attempts):
        return _ignored(report, task, f"superseded: task is at attempt {task.attempts}")
    current = task.attempts if running else task.attempts + 1
    if report.attempt != current:
        return _ignored(report, task, f"report for attempt {report.attempt}, task is {task.status.value}"
                                      f" after attempt {task.attempts}")
    if running and task.node != report.node:  # fenced: only the attempt's owner writes
        return _ignored(report, task, f"attempt {report.attempt} runs on {task.node} (a claim takes over"
                                      " an expired lease)")
    if report.status is TaskStatus.QUEUED:
        return _returned(service, task, report) if running else _ignored(report, task, "not running")
    if report.status is TaskStatus.RUNNING:
        if running:
            return _renew(service, task, report, terms)
        started = _start(service, task, report, lease_s=terms.lease_s)
        return _applied(report, started, f"running attempt {report.attempt} on {report.node}")
    if not running:  # no claim or running report came: start the attempt here (claim-less flow)
        task = _start(service, task, report, lease_s=terms.lease_s)
    finished_at = max(report.at, task.started_at or report.at)
    if report.status is TaskStatus.SUCCEEDED:
        done = service.store.update(task, TaskStatus.SUCCEEDED, node=report.node, result=report.result,
                                    error=None, finished_at=finished_at, lease_until=None,
                                    detail=f"reported by {report.node}")
        return _applied(report, done, "succeeded")
    return _failed(service, task, report, finished_at)


def _renew(service: TaskService, task: Task, report: TaskReport, terms: LeaseTerms) -> ReportAnswer:
    renewed = service.store.renew_leases([(task.id, task.attempts)], report.node, terms.lease_s)
    if task.id not in renewed:  # changed since we read it (cancelled, taken over): decide again
        raise ConcurrentUpdate(task.id)
    return _applied(report, task, "lease renewed")


def _returned(service: TaskService, task: Task, report: TaskReport) -> ReportAnswer:
    """The owner gives its attempt back on a graceful shutdown: it does not count."""
    returned = service.store.update(task, TaskStatus.QUEUED, node=report.node, lease_until=None,
                                    attempts=task.attempts - 1, detail="returned on worker shutdown (reported)",
                                    publish=report.republish)
    if report.republish:  # its delivery was acked early (a long task): only the store knows it
        service.publisher.send([returned])
    return _applied(report, returned, "returned to the queue")


def _applied(report: TaskReport, task: Task, reason: str) -> ReportAnswer:
    return ReportAnswer(report.id, report.attempt, report.wire_status, True, reason, task.status)


def _ignored(report: TaskReport, task: Task, reason: str) -> ReportAnswer:
    return ReportAnswer(report.id, report.attempt, report.wire_status, False, f"ignored: {reason}", task.status)


def _start(service: TaskService, task: Task, report: TaskReport, *, lease_s: float) -> Task:
    return service.store.update(
        task, TaskStatus.RUNNING, node=report.node, detail=f"attempt {report.attempt} (reported)",
        attempts=report.attempt, started_at=report.at, lease_until=service.store.now() + lease_s, finished_at=None,
        queued_at=task.queued_at or report.at,
    )


def _failed(service: TaskService, task: Task, report: TaskReport, finished_at: float) -> ReportAnswer:
    error = report.error or {"type": "error", "message": "failed", "traceback": None}
    if report.retry and task.attempts < task.max_attempts:
        spec = service.registry.find(task.type)
        delay = report.retry_delay_s
        if delay is None:
            delay = backoff_s(task.attempts, spec.options if spec else TaskOptions())
        updated = service.store.update(
            task, TaskStatus.RETRYING, node=report.node, error=error, eta=service.store.now() + delay, lease_until=None,
            detail=f"{error['type']}: retry in {delay:.2f} s (reported)", publish=True,
        )
        service.publisher.send([updated])  # due at its eta; the outbox intent covers a crash
        log.warning("task %s attempt %d failed on %s (%s); retrying in %.2f s", task.id, task.attempts,
                    report.node, error["message"], delay, extra=_extra(task, report, "retry"))
        return _applied(report, updated, f"retrying in {delay:.2f} s")
    failed = service.store.update(task, TaskStatus.FAILED, node=report.node, error=error,
                                  finished_at=finished_at, lease_until=None, detail=f"{error['type']} (reported)")
    log.error("task %s failed after %d attempt(s) on %s: %s", task.id, task.attempts, report.node,
              error["message"], extra=_extra(task, report, "failed"))
    return _applied(report, failed, "failed")


def record_heartbeat(service: TaskService, beat: Heartbeat) -> None:
    """Register or refresh the node. ``last_heartbeat`` is the center's clock: liveness is
    judged against it, so a node's clock skew cannot keep it alive."""
    started_at = beat.started_at
    if started_at is None:
        known = next((n for n in service.store.nodes() if n.id == beat.node), None)
        started_at = known.started_at if known else service.store.now()
    service.store.upsert_node(NodeInfo(
        id=beat.node, host=beat.host or "unknown", pid=beat.pid or 0, queues=beat.queues,
        concurrency=beat.concurrency, started_at=started_at, last_heartbeat=service.store.now(), status=beat.status,
        in_flight=beat.in_flight, done=beat.done,
    ))


def _extra(task: Task, report: TaskReport, action: str) -> dict[str, str]:
    return {"task_id": str(task.id), "queue": task.queue, "worker": report.node, "action": action}


# -- consuming ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Verdict:
    """What a consumer does with one body from ``_reports``: answer it (when the sender asked,
    with AMQP reply_to), dead-letter it with a reason, or hand it back to try again later."""

    answer: dict[str, Any] | None = None
    dead_letter: str | None = None
    retry_later: bool = False
    summary: str = ""


def process(service: TaskService, body: bytes, terms: LeaseTerms, *, can_answer: bool = True) -> Verdict:
    """Decode and apply one report or claim body; never raises for the body's own faults."""
    try:
        report = decode(body)
    except SerializationError as exc:
        log.error("dead-lettering a malformed report: %s", exc, extra={"action": "dead_letter"})
        reason = f"malformed report: {exc}"
        return Verdict(answer=error_answer(reason), dead_letter=reason, summary=reason)
    if isinstance(report, ClaimRequest) and not can_answer:
        reason = "a claim needs an AMQP reply_to to be answered; it was not applied"
        return Verdict(dead_letter=reason, summary=reason)
    try:
        result = answer(service, report, terms)
    except TaskNotFound as exc:
        log.error("dead-lettering a report for unknown task %s", exc.task_id, extra={"action": "dead_letter"})
        reason = f"report for unknown task id {exc.task_id}"
        reply = error_answer(reason)
        if isinstance(report, TaskReport):
            reply = ReportAnswer(report.id, report.attempt, report.wire_status, False, f"ignored: {reason}").to_dict()
        return Verdict(answer=reply, dead_letter=reason, summary=reason)
    except ConveyorError as exc:  # store or broker trouble: apply it again later
        log.warning("could not apply a report (%s); trying again shortly", exc)
        return Verdict(retry_later=True, summary=str(exc))
    return Verdict(answer=result.to_dict(), summary=result.reason)


def error_answer(reason: str) -> dict[str, Any]:
    """The answer to a body the center could not take at all (malformed, unknown task)."""
    return {"protocol": PROTOCOL_VERSION, "kind": "error", "applied": False, "stop": True, "reason": reason}


class ReportConsumer:
    """A thread that consumes ``_reports`` through the Broker port and applies each report; acks
    after the store write, dead-letters malformed reports and reports for unknown tasks, and hands
    back (after a pause) reports it could not apply because the store or broker failed.

    The Broker port carries no AMQP reply_to, so this consumer answers nothing and cannot take
    claims; on RabbitMQ the center runs ``reports_amqp.AmqpReportListener`` instead."""

    def __init__(self, service: TaskService, *, lease_s: float, prefetch: int = 32,
                 retry_pause_s: float = 1.0, terms: LeaseTerms | None = None) -> None:
        self.service = service
        self.terms = terms or LeaseTerms(lease_s=lease_s)
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
        verdict = process(self.service, delivery.body, self.terms, can_answer=False)
        if verdict.dead_letter is not None:
            delivery.dead_letter(verdict.dead_letter)
        elif verdict.retry_later:
            delivery.nack(requeue=True, delay_s=self.retry_pause_s)
        else:
            delivery.ack()
            self.applied += 1
            log.debug("report applied: %s", verdict.summary)


class ReportSink(Protocol):
    applied: int

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 5.0) -> None: ...


def open_report_consumer(service: TaskService, settings: Settings) -> ReportSink:
    """The center's consumer of ``_reports``: on RabbitMQ the listener that answers claims and
    reports (``reports_amqp``), elsewhere the Broker-port consumer (no answers, no claims)."""
    terms = LeaseTerms.from_settings(settings)
    if settings.broker_url.startswith(("amqp://", "amqps://")):
        from conveyor.reports_amqp import AmqpReportListener

        namespace = getattr(service.broker, "namespace", "conveyor")
        return AmqpReportListener(service, settings.broker_url, terms, namespace=namespace)
    return ReportConsumer(service, lease_s=terms.lease_s, terms=terms)
