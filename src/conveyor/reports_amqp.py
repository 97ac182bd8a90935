"""The center's report listener on RabbitMQ: consumes ``<namespace>._reports`` on its own AMQP
connection (``amqp_side``) so that it sees ``reply_to`` and ``correlation_id``, and answers:

- a claim (kind ``claim``) always gets its answer (run / drop / later);
- a task report or heartbeat that carries ``reply_to`` gets one too (``applied``, ``stop``): how a
  foreign worker learns that its renewal found the lease lost or the task cancelled, or that
  its report was for a superseded attempt.

Answers go to the default exchange with routing key = ``reply_to`` (RabbitMQ's direct reply-to,
``amq.rabbitmq.reply-to``, or a queue of the worker's own) and the request's
``correlation_id``. Reports are applied (``reports.process``) before their delivery is acked;
malformed ones and ones about unknown task ids are dead-lettered with the reason, after the
answer; store or broker trouble hands the delivery back after a pause.
"""

from __future__ import annotations

import logging

from conveyor import message
from conveyor.amqp_side import AmqpSideConsumer, Incoming, Outgoing, Settle
from conveyor.broker._amqp_loop import resolve_url
from conveyor.foreign import LeaseTerms
from conveyor.reports import REPORTS_QUEUE, process
from conveyor.service import TaskService

log = logging.getLogger(__name__)

DEAD_LETTER_SUFFIX = ".dead"
# reply_to must name a queue: AMQP short strings, no control characters.
_MAX_REPLY_TO = 255


class AmqpReportListener:
    """Start with ``start()``; ``stop()`` closes its connection. ``applied`` counts deliveries
    applied (or answered) and acked, not dead-lettered."""

    def __init__(self, service: TaskService, url: str, terms: LeaseTerms, *, namespace: str = "conveyor",
                 prefetch: int = 32, retry_pause_s: float = 1.0) -> None:
        self.service = service
        self.terms = terms
        self.namespace = namespace
        self.retry_pause_s = retry_pause_s
        self.applied = 0
        amqp_url, _ = resolve_url(url, None)
        self._consumer = AmqpSideConsumer(amqp_url, f"{namespace}.{REPORTS_QUEUE}", self.handle,
                                          prefetch=prefetch, name="reports")

    def start(self) -> None:
        broker = self.service.broker
        broker.declare_queue(REPORTS_QUEUE)  # as every Conveyor queue, by its owner
        broker.dead_letters(limit=1)  # a peek declares the dead-letter queue this listener publishes to
        self._consumer.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._consumer.stop(timeout_s)

    def handle(self, incoming: Incoming) -> Settle:
        reply_to = _valid_reply_to(incoming.reply_to)
        verdict = process(self.service, incoming.body, self.terms, can_answer=reply_to is not None)
        if verdict.retry_later:
            return Settle(action="requeue", pause_s=self.retry_pause_s)
        publish: list[Outgoing] = []
        if reply_to is not None and verdict.answer is not None:
            publish.append(Outgoing(message.dumps(verdict.answer), routing_key=reply_to,
                                    correlation_id=incoming.correlation_id, persistent=False))
        if verdict.dead_letter is not None:
            headers = {**incoming.headers, "x-conveyor-reason": verdict.dead_letter[:1000],
                       "x-conveyor-queue": REPORTS_QUEUE}
            publish.append(Outgoing(incoming.body, routing_key=self.namespace + DEAD_LETTER_SUFFIX,
                                    headers=headers, content_type=incoming.content_type or "application/json"))
        else:
            self.applied += 1
            log.debug("report applied: %s", verdict.summary)
        return Settle(action="ack", publish=tuple(publish))


def _valid_reply_to(value: str | None) -> str | None:
    if not value or len(value.encode("utf-8", "replace")) > _MAX_REPLY_TO:
        return None
    if any(ord(ch) < 32 for ch in value):
        return None
    return value
