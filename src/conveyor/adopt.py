"""Adopting an existing queue: every message producers already publish to a queue Conveyor does
not own (``task_queue``, plain bodies like ``"Task 0"`` or their own JSON) becomes a tracked
Conveyor task, without touching the producers.

``QueueAdopter`` consumes that queue by its exact AMQP name, on its own connection
(``amqp_side``), as one more competing consumer beside the queue's old ones. The queue is only
declared passively: it must exist, and its arguments, its bindings, its other consumers and every
other queue are left as they are. For each message it:

1. decodes it with a ``Decoder`` into a task type and params (``plain_decoder``: the body as text
   under ``params.body``; ``json_decoder``: a JSON object, the type from a field or fixed);
2. stores a task for it in the Conveyor queue ``target_queue`` (validated like any submit), with
   a stable id: the AMQP ``message_id`` when it is a UUID, else one derived from it, and the
   idempotency key ``adopt:<queue>:<message_id>``, so a redelivered message is stored once;
3. publishes the task message (confirmed) and only then acks the original.

From there the task is Conveyor's: claimed by a Python or PHP worker, visible, retried, timed out.
A message the decoder refuses is dead-lettered (``<namespace>.dead``) with the reason.

Without a ``message_id`` there is nothing to recognise a redelivery by: if the adopter dies (or
its connection drops) after the store write and before RabbitMQ has its ack, RabbitMQ redelivers
the message and a second task is created for it. The window is one store write plus one
confirmed publish per message; producers close it by setting ``message_id``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conveyor import message
from conveyor.amqp_side import AmqpSideConsumer, Incoming, Outgoing, Settle
from conveyor.broker._amqp_loop import resolve_url
from conveyor.errors import ConveyorError, SerializationError
from conveyor.model import TaskStatus
from conveyor.service import SubmitRequest, TaskService, publish_tasks
from conveyor.validation import MAX_KEY_LENGTH, QUEUE_NAME

log = logging.getLogger(__name__)

ADOPTED_IDS = uuid.UUID("6f1c4a52-7d1e-4c55-9b86-0e3a3c1f4a10")  # uuid5 namespace of ids from message_id


@dataclass(frozen=True, slots=True)
class Adopted:
    """What a decoder makes of one message."""

    type: str
    params: dict[str, Any]


Decoder = Callable[[Incoming], Adopted]


def plain_decoder(task_type: str, field: str = "body") -> Decoder:
    """The body as UTF-8 text, under ``params[field]``: ``"Task 0"`` -> ``{"body": "Task 0"}``."""

    def decode(incoming: Incoming) -> Adopted:
        try:
            text = incoming.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"the body is not UTF-8 text: {exc}") from None
        return Adopted(task_type, {field: text})

    return decode


def json_decoder(task_type: str | None = None, *, type_field: str = "type",
                 params_field: str | None = None) -> Decoder:
    """A JSON object. The type is ``task_type``, or else the object's ``type_field``; the params
    are the object's ``params_field``, or else the whole object (without ``type_field`` when the
    type came from it)."""

    def decode(incoming: Incoming) -> Adopted:
        try:
            data = message.loads(incoming.body)
        except SerializationError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(data, dict):
            raise ValueError("the body is not a JSON object")
        kind = task_type
        if kind is None:
            kind = data.get(type_field)
            if not isinstance(kind, str):
                raise ValueError(f"the body has no string field {type_field!r} to take the task type from")
            data = {k: v for k, v in data.items() if k != type_field}
        params = data if params_field is None else data.get(params_field)
        if not isinstance(params, dict):
            raise ValueError(f"field {params_field!r} is not a JSON object")
        return Adopted(kind, params)

    return decode


def target_for(source: str) -> str:
    """The Conveyor queue adopted messages go to by default: the source's name, made legal."""
    name = re.sub(r"[^A-Za-z0-9_.:-]", "-", source)[:200].lstrip("_.:-") or "adopted"
    return name if QUEUE_NAME.fullmatch(name) else "adopted"


class QueueAdopter:
    """Consume ``source_queue`` (an AMQP queue name, used as is) and turn each message into a task."""

    def __init__(self, service: TaskService, amqp_url: str, source_queue: str, decoder: Decoder, *,
                 target_queue: str | None = None, max_attempts: int | None = None, timeout: float | None = None,
                 namespace: str = "conveyor", prefetch: int = 50, retry_pause_s: float = 1.0) -> None:
        self.service = service
        self.source = source_queue
        self.decoder = decoder
        self.target = target_queue or target_for(source_queue)
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.namespace = namespace
        self.retry_pause_s = retry_pause_s
        self.adopted = 0
        amqp, _ = resolve_url(amqp_url, None)
        self._consumer = AmqpSideConsumer(amqp, source_queue, self.handle, prefetch=prefetch, name="adopt")

    def start(self) -> None:
        self.service.broker.declare_queue(self.target)
        self.service.broker.dead_letters(limit=1)  # a peek declares the dead-letter queue
        self._consumer.start()
        log.info("adopting queue %r: its messages become tasks in queue %r", self.source, self.target)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._consumer.stop(timeout_s)

    def handle(self, incoming: Incoming) -> Settle:
        try:
            adopted = self.decoder(incoming)
            task = self.service.build_task(SubmitRequest(
                type=adopted.type, params=adopted.params, queue=self.target, max_attempts=self.max_attempts,
                timeout=self.timeout, idempotency_key=self._key(incoming.message_id)))
            message.encode(message.Message.for_task(task))  # over the size limit: refuse before storing
        except (ValueError, SerializationError) as exc:
            reason = f"cannot adopt a message of queue {self.source}: {exc}"
            log.error("dead-lettering: %s", reason, extra={"queue": self.source, "action": "dead_letter"})
            headers = {**incoming.headers, "x-conveyor-reason": reason[:1000], "x-conveyor-queue": self.source}
            return Settle(publish=(Outgoing(incoming.body, routing_key=f"{self.namespace}.dead", headers=headers,
                                            content_type=incoming.content_type or "application/octet-stream"),))
        task = task.replace(id=self._task_id(incoming.message_id) or task.id)
        try:
            stored, created = self.service.store.create(task, detail=f"adopted from queue {self.source}")
            if created or (incoming.redelivered and stored.status is TaskStatus.QUEUED and stored.attempts == 0):
                # A redelivered message may have died between its store write and its publish:
                # publish again (a duplicate message is dropped by the claim).
                publish_tasks(self.service.broker, [stored])
        except ConveyorError as exc:
            log.warning("could not adopt a message of %s (%s); trying again shortly", self.source, exc)
            return Settle(action="requeue", pause_s=self.retry_pause_s)
        self.adopted += int(created)
        return Settle()

    def _key(self, message_id: str | None) -> str | None:
        if not message_id:
            return None
        key = f"adopt:{self.source}:{message_id}"
        if len(key) > MAX_KEY_LENGTH or "\x00" in key:
            key = f"adopt:{hashlib.sha256(key.encode('utf-8', 'replace')).hexdigest()}"
        return key

    def _task_id(self, message_id: str | None) -> uuid.UUID | None:
        if not message_id:
            return None
        try:
            return uuid.UUID(message_id)
        except ValueError:
            return uuid.uuid5(ADOPTED_IDS, f"{self.source}\x00{message_id}")
