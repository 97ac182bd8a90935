"""The Broker port: move task messages from submitters to workers.

Implementations: ``SqliteBroker`` (embedded default: one file shared by the processes of
one machine, with a visibility lease) and ``RabbitmqBroker`` (distributed).

A ``Delivery`` is the broker's handle on one received message; the message itself is raw
bytes, since a worker must be able to dead-letter a body it cannot parse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

# (body, queue, priority, delay_s, headers): one message of ``Broker.publish_many``.
PublishItem = tuple[bytes, str, int, float, Mapping[str, str] | None]


class Delivery(Protocol):
    body: bytes
    headers: Mapping[str, str]
    queue: str
    redelivered: bool  # delivered before and not acked (its consumer died or gave it back)

    def ack(self) -> None:
        """Done with it: the broker forgets the message."""
        ...

    def nack(self, *, requeue: bool, delay_s: float = 0.0) -> None:
        """Give it back: to its queue (after ``delay_s``) when ``requeue``, else drop it."""
        ...

    def dead_letter(self, reason: str) -> None:
        """Move it, unchanged, to the dead-letter queue with ``reason`` (header
        ``x-conveyor-reason``), then ack it."""
        ...

    def renew(self, lease_s: float) -> None:
        """Keep it ours for another ``lease_s`` (no-op where the broker holds deliveries by
        connection, as RabbitMQ does)."""
        ...


class Consumer(Protocol):
    def get(self, timeout_s: float) -> Delivery | None:
        """The next delivery, waiting up to ``timeout_s``; None if none came. Never holds
        more than ``prefetch`` unacked deliveries (handed out or buffered) at once."""
        ...

    def close(self) -> None:
        """Stop receiving; buffered deliveries not handed out go back to their queue."""
        ...


class Broker(Protocol):
    # True when an unacked delivery is held by a renewable lease (SqliteBroker): a worker can
    # keep it unacked for a task of any length. False when deliveries are held by the
    # connection under a broker-side deadline (RabbitMQ's consumer_timeout): the worker then
    # acks a long-running task's delivery early and the store's ownership lease protects it.
    lease_based: bool

    def declare_queue(self, queue: str) -> None:
        ...

    def publish(self, body: bytes, *, queue: str, priority: int = 0, delay_s: float = 0.0,
                headers: Mapping[str, str] | None = None) -> None:
        """Durably enqueue ``body``; returns only once the broker has accepted it (confirms)."""
        ...

    def publish_many(self, items: Iterable[PublishItem]) -> None:
        """Publish (body, queue, priority, delay_s, headers) items together: one transaction or
        one pipelined wait for all confirms. Returns once every one is accepted."""
        ...

    def consume(self, queues: Sequence[str], *, prefetch: int) -> Consumer:
        ...

    def dead_letters(self, limit: int = 100) -> list[tuple[bytes, dict[str, str]]]:
        """Peek at the dead-letter queue (bodies and headers), oldest first."""
        ...

    def close(self) -> None:
        ...
