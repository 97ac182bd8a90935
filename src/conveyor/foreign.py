"""Claims by workers outside Conveyor (PHP, or anything speaking docs/protocol.md).

A foreign worker does not write the store, so before it runs a delivered task message it asks
the center whether it may: a *claim* (over AMQP on ``_reports`` with ``reply_to``, or
``POST /api/v1/tasks/{id}/claim``). The center decides by the claim rules every worker follows
(docs/architecture.md), against its own clock, never the worker's:

- task unknown: adopt it from the task message the claim carries (created ``queued`` with
  ``attempts = m - 1``; the queue the delivery came from wins over the message's), then decide;
- task final: DROP ("already <status>");
- queued / scheduled / retrying: attempt ``m <= attempts`` is a stale copy: DROP ("superseded");
  eta not reached: LATER (eta - now); else RUN as attempt ``m``;
- running under a live lease: LATER (lease left + 0.5 s), unless the same node claims the
  same attempt again (an idempotent repeat): RUN;
- running, lease expired: take over (a crash is counted; the last allowed crash fails it as
  ``crashed``: DROP), then RUN as attempt ``max(m, attempts + 1)`` on the claiming node.

The answer names the attempt the worker must report under (after a take-over it is not the
message's) and the lease terms: renew every ``renew_s`` (a ``running`` report), heartbeat every
``heartbeat_s``. ``claim`` is built on the Store's compare-and-set (``get``, ``create``,
``update``); a store-native claim can replace its inside without changing its contract.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

from conveyor import message, validation
from conveyor.config import Settings
from conveyor.errors import ConcurrentUpdate, SerializationError, StoreError, TaskNotFound
from conveyor.message import PROTOCOL_VERSION, Message
from conveyor.model import Task, TaskStatus
from conveyor.recovery import take_over
from conveyor.service import TaskService

EARLY_SLACK_S = 0.05  # a delayed delivery may arrive a little early; run it anyway
LIVE_LEASE_MARGIN_S = 0.5
_CAS_TRIES = 10

Decision = Literal["run", "drop", "later"]


@dataclass(frozen=True, slots=True)
class LeaseTerms:
    """What the center tells foreign workers: how long a lease lasts, how often to renew it and
    to heartbeat, and how many node deaths a task survives."""

    lease_s: float = 30.0
    heartbeat_s: float = 5.0
    max_crashes: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> LeaseTerms:
        return cls(lease_s=settings.lease_s, heartbeat_s=settings.heartbeat_s, max_crashes=settings.max_crashes)

    @property
    def renew_s(self) -> float:
        return self.lease_s / 3

    def to_dict(self) -> dict[str, float]:
        return {"lease_s": self.lease_s, "renew_s": round(self.renew_s, 3), "heartbeat_s": self.heartbeat_s}


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """A foreign node asking to run attempt ``attempt`` of task ``id`` it was delivered."""

    id: uuid.UUID
    attempt: int
    node: str
    queue: str | None = None  # the logical queue the delivery came from
    message: Message | None = None  # the task message, so an unknown task can be adopted


@dataclass(frozen=True, slots=True)
class ClaimAnswer:
    id: uuid.UUID
    decision: Decision
    reason: str
    terms: LeaseTerms
    attempt: int | None = None  # run: report under this attempt
    delay_s: float | None = None  # later: look again after this long
    timeout: float | None = None  # run: seconds the attempt may take (None: no limit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL_VERSION, "kind": "claim", "id": str(self.id), "decision": self.decision,
            "reason": self.reason, "attempt": self.attempt,
            "delay_s": None if self.delay_s is None else round(self.delay_s, 3), "timeout": self.timeout,
            **self.terms.to_dict(),
        }


def decode_claim(data: dict[str, Any], task_id: uuid.UUID | None = None) -> ClaimRequest:
    """A claim from its JSON object (the AMQP body, or the HTTP body with ``task_id`` from the
    path). Raises SerializationError saying what is wrong."""
    try:
        tid = task_id if task_id is not None else uuid.UUID(_uuid_text(data["id"]))
        queue = data.get("queue")
        raw = data.get("message")
        msg = None
        if raw is not None:
            if not isinstance(raw, dict):
                raise ValueError("message must be a task message (a JSON object)")
            raw = {k: v for k, v in raw.items() if k in message.FIELDS}  # unknown fields are ignored
            validation.check_json(raw, "message")  # NaN would be encoded as null below
            msg = message.decode(message.dumps(raw))
            if msg.id != tid:
                raise ValueError(f"message is for task {msg.id}, not {tid}")
        return ClaimRequest(
            id=tid, attempt=validation.check_attempt(data["attempt"]), node=validation.check_node(data["node"]),
            queue=None if queue is None else validation.check_queue(queue), message=msg,
        )
    except KeyError as exc:
        raise SerializationError(f"invalid claim: missing field {exc}") from exc
    except (TypeError, ValueError, SerializationError) as exc:
        raise SerializationError(f"invalid claim: {exc}") from exc


def _uuid_text(value: object) -> str:
    if not isinstance(value, str) or not message.UUID_TEXT.fullmatch(value):
        raise ValueError("id must be a UUID string (8-4-4-4-12 hex)")
    return value


def claim(service: TaskService, request: ClaimRequest, terms: LeaseTerms) -> ClaimAnswer:
    """Decide whether ``request.node`` may run the attempt it was delivered (see the module
    docstring); writes the store when the answer is RUN. Raises StoreError when the store is
    unreachable (ask again later)."""
    store = service.store
    for _ in range(_CAS_TRIES):
        try:
            task = store.get(request.id)
        except TaskNotFound:
            if request.message is None:
                return _answer(request, "drop", "unknown task id (send the task message to adopt it)", terms)
            task = _adopt(service, request)
        try:
            return _decide(service, task, request, terms)
        except ConcurrentUpdate:
            continue  # someone wrote the task first: read it again and re-decide
    return _answer(request, "later", "contended", terms, delay_s=LIVE_LEASE_MARGIN_S)


def _adopt(service: TaskService, request: ClaimRequest) -> Task:
    """Create the task a foreign client published straight to the broker."""
    assert request.message is not None
    task = request.message.to_task(service.store.now())
    if request.queue is not None and request.queue != task.queue:
        task = task.replace(queue=request.queue)  # retries must go where the workers are
    try:
        # No outbox intent: the message exists, a worker of the center's holds it.
        created, _ = service.store.create(task, detail="adopted from a broker message (claim)", publish=False)
    except StoreError:
        try:  # two claims raced to adopt it: the other one's insert won
            return service.store.get(request.id)
        except TaskNotFound:
            raise StoreError(f"task {request.id}: could not adopt it") from None
    return created


def _decide(service: TaskService, task: Task, request: ClaimRequest, terms: LeaseTerms) -> ClaimAnswer:
    at = service.store.now()  # leases are judged on the store's clock, like Conveyor's own workers
    store = service.store
    if task.status.is_final:
        return _answer(request, "drop", f"already {task.status.value}", terms)
    if task.status is TaskStatus.RUNNING:
        if task.node == request.node and task.attempts == request.attempt:
            renewed = store.update(task, None, lease_until=at + terms.lease_s)
            return _run(service, request, renewed, "already claimed by this node", terms)
        if task.lease_until is not None and task.lease_until > at:
            return _answer(request, "later", f"running on {task.node} (lease live)", terms,
                           delay_s=task.lease_until - at + LIVE_LEASE_MARGIN_S)
        task = take_over(store, task, max_crashes=terms.max_crashes)
        if task.status.is_final:
            return _answer(request, "drop", "failed as crashed", terms)
        return _start(service, task, max(request.attempt, task.attempts + 1), request, terms, at)
    if request.attempt <= task.attempts:
        return _answer(request, "drop", f"superseded: task is at attempt {task.attempts}", terms)
    if task.eta is not None and task.eta > at + EARLY_SLACK_S:
        return _answer(request, "later", "not due yet", terms, delay_s=task.eta - at)
    return _start(service, task, request.attempt, request, terms, at)


def _start(service: TaskService, task: Task, attempt: int, request: ClaimRequest, terms: LeaseTerms,
           at: float) -> ClaimAnswer:
    started = service.store.update(
        task, TaskStatus.RUNNING, node=request.node, detail=f"attempt {attempt} (claimed)", attempts=attempt,
        started_at=at, lease_until=at + terms.lease_s, finished_at=None, queued_at=task.queued_at or at,
    )
    return _run(service, request, started, f"attempt {attempt} is yours", terms)


def _run(service: TaskService, request: ClaimRequest, task: Task, reason: str, terms: LeaseTerms) -> ClaimAnswer:
    timeout = task.timeout
    if timeout is None:  # a type registered in the center's app knows its own limit
        spec = service.registry.find(task.type)
        timeout = spec.options.timeout if spec else None
    return ClaimAnswer(id=request.id, decision="run", reason=reason, terms=terms, attempt=task.attempts,
                       timeout=timeout)


def _answer(request: ClaimRequest, decision: Decision, reason: str, terms: LeaseTerms,
            delay_s: float | None = None) -> ClaimAnswer:
    return ClaimAnswer(id=request.id, decision=decision, reason=reason, terms=terms, delay_s=delay_s)
