"""RabbitMQ broker: the distributed transport (synchronous facade over ``AmqpLink``).

Topology, every name under ``namespace`` (default "conveyor")::

    exchange <ns>               direct, durable; the routing key is the logical queue name Q
    queue    <ns>.Q             tasks for Q; classic queues get x-max-priority=10 (priority 0-9)
    queue    <ns>.dead          dead letters: body unchanged, headers + x-conveyor-reason/-queue
    queue    <ns>.delay.Q.<ms>  holds messages <ms> ms (x-message-ttl), then dead-letters them
                                to <ns> with routing key Q; deleted after <ms> + 60 s unused

Queue type: the ``queue_type`` argument, else the URL's ``?queue_type=`` (stripped before the
URL reaches the AMQP client), else env CONVEYOR_QUEUE_TYPE, else "classic"; every queue of a
broker gets it. RabbitMQ 3.10 refuses x-max-priority on a quorum queue (PRECONDITION_FAILED) and
ignores message priority there, so quorum queues are FIFO: the argument is omitted and the
priority, still sent, has no effect. Quorum queues also refuse global QoS (the connection is
closed), so a quorum consumer of k queues may hold up to k * prefetch deliveries; a classic
consumer of several queues shares one channel-wide prefetch.

Delays (retries, ETA tasks) take no worker slot and no polling: the message waits in a delay
queue until its TTL expires and RabbitMQ routes it back. To keep the number of delay queues
small, delays are rounded *up*: below 1 s to the next 100 ms step, otherwise to the next whole
second, so a message is never early and at most 100 ms (or 1 s) late. Publishing does not
count as use for x-expires, so a delay queue is re-declared when its last declaration is
older than 30 s; mandatory publishing catches one that vanished anyway.

Reliability: persistent messages, durable queues, publisher confirms on every publish, manual
acks. Several hosts of a cluster may be given in the URL; the link fails over between them
and restores topology and consumers (``_amqp_loop.AmqpLink``). ``publish`` waits out an
outage of up to 30 s, then raises BrokerConnectionError; a publish RabbitMQ refuses (nack) is
sent again, its queue declared afresh and then on a new channel, until the same deadline, then
raises BrokerError. A publish retried after a lost confirm may arrive twice (the store-side
claim deduplicates). Deliveries from a channel that
died cannot be settled: ack/nack on them are ignored, as RabbitMQ redelivers them; buffered
ones are dropped by ``get``. Only ``str`` headers come through (bytes decoded, numbers as
text); RabbitMQ's own x-death, x-first/last-death-* and x-delivery-count headers are hidden.

Threading: all AMQP I/O runs on one event loop in a thread the broker owns; the public methods
are synchronous and may be called from any thread but that one. The worker does not use this
facade: it runs an ``AmqpLink`` on its own event loop (``worker/intake.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import queue as queue_module
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from conveyor._loop_thread import EventLoopThread
from conveyor.batching import Combiner
from conveyor.broker import _amqp_loop
from conveyor.broker._amqp_loop import (
    CONNECT_TIMEOUT_S,
    CONNECTION_ERRORS,
    DRIVER_ERRORS,
    MAX_PRIORITY,
    AmqpLink,
    Incoming,
    Outgoing,
    Subscription,
    resolve_url,
)
from conveyor.broker.base import PublishItem
from conveyor.errors import BrokerConnectionError, BrokerError, ConveyorError

__all__ = ["MAX_DELAY_S", "RabbitmqBroker", "quantize_delay_ms"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

OPERATION_TIMEOUT_S = 15.0  # declare, consume, peek, close


# RabbitMQ caps x-expires at 2^32-1 ms (~49.7 days). A longer delay waits in hops of at most
# this: the message reaches its queue early, the worker's claim sees the task is not due yet
# (scheduled or retrying with a later eta) and hands it back with the remaining delay.
MAX_DELAY_S = 7 * 24 * 3600.0


def quantize_delay_ms(delay_s: float) -> int:
    """The delay queue TTL for ``delay_s``: 0 for none, else rounded up to 100 ms steps below
    1 s and to whole seconds from 1 s (never early, at most one step late), capped at one hop
    of ``MAX_DELAY_S``."""
    if delay_s <= 0:
        return 0
    delay_s = min(delay_s, MAX_DELAY_S)
    ms = delay_s * 1000.0 - 1e-6  # float noise must not push 0.3 s up to 400 ms
    step = 100 if ms < 1000 else 1000
    return max(step, math.ceil(ms / step) * step)


def outgoing(items: Iterable[PublishItem]) -> list[Outgoing]:
    return [
        Outgoing(body, queue, min(max(int(priority), 0), MAX_PRIORITY), quantize_delay_ms(delay_s),
                 {str(k): str(v) for k, v in (headers or {}).items()})
        for body, queue, priority, delay_s, headers in items
    ]


class RabbitmqBroker:
    # Deliveries are held by the channel under RabbitMQ's consumer_timeout, not by a lease
    # we could renew: long tasks get their delivery acked early (see Broker.lease_based).
    lease_based = False
    declares_on_publish = True  # a publish declares its queue (once per broker) on its own

    def __init__(self, url: str, *, namespace: str = "conveyor", queue_type: str | None = None) -> None:
        amqp_url, resolved_type = resolve_url(url, queue_type)
        self.url = url
        self.amqp_url = amqp_url
        self.namespace = namespace
        self.queue_type = resolved_type
        self.link = AmqpLink(amqp_url, namespace, resolved_type, name=f"conveyor {namespace}")
        self._consumers: set[_RabbitmqConsumer] = set()
        self._publishes: Combiner[list[Outgoing], None] = Combiner(self._publish_batch)
        self._lock = threading.Lock()
        self._closed = False
        self._thread = EventLoopThread(name=f"conveyor-amqp-{namespace}")
        try:
            self._thread.run(self.link.connect(), CONNECT_TIMEOUT_S * len(self.link.hosts) + 5)
        except BaseException as exc:
            self._thread.stop()
            if isinstance(exc, ConveyorError):
                raise
            raise BrokerConnectionError(f"cannot connect to RabbitMQ at {self.link.safe_url}: {exc!r}") from exc

    def __repr__(self) -> str:
        return f"RabbitmqBroker({self.link.safe_url!r}, namespace={self.namespace!r})"

    def __enter__(self) -> RabbitmqBroker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def declare_queue(self, queue: str) -> None:
        self._call(self.link.ensure_queue(queue), OPERATION_TIMEOUT_S, f"declare queue {queue!r}")

    def publish(self, body: bytes, *, queue: str, priority: int = 0, delay_s: float = 0.0,
                headers: Mapping[str, str] | None = None) -> None:
        # Concurrent publishers share one hop to the loop thread and one pipelined wait for
        # their confirms (group commit); a lone publisher pays one round trip as before.
        self.publish_many([(body, queue, priority, delay_s, headers)])

    def _publish_batch(self, batches: Sequence[list[Outgoing]]) -> list[None]:
        flat = [out for batch in batches for out in batch]
        self._call(self.link.publish_all(flat, _amqp_loop.OUTAGE_S),
                   _amqp_loop.OUTAGE_S + OPERATION_TIMEOUT_S, "publish")
        return [None] * len(batches)

    def publish_many(self, items: Iterable[PublishItem]) -> None:
        """Publish (body, queue, priority, delay_s, headers) items pipelined: all are sent,
        then all confirms awaited together. Returns once RabbitMQ confirmed every one."""
        out = outgoing(items)
        if out:
            self._publishes.call(out)

    def publish_later(self, items: Iterable[PublishItem]) -> concurrent.futures.Future[None]:
        """Hand the items to the loop and return at once; the future completes when RabbitMQ
        confirmed every one (or fails with BrokerError / BrokerConnectionError)."""
        out = outgoing(items)
        if self._closed:
            raise BrokerError("publish: the broker is closed")
        return asyncio.run_coroutine_threadsafe(self._publish_wrapped(out), self._thread.loop)

    async def _publish_wrapped(self, out: list[Outgoing]) -> None:
        try:
            await self.link.publish_all(out, _amqp_loop.OUTAGE_S)
        except ConveyorError:
            raise
        except CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(f"publish: RabbitMQ at {self.link.safe_url}: {exc!r}") from exc
        except DRIVER_ERRORS as exc:
            raise BrokerError(f"publish: {exc!r}") from exc

    def consume(self, queues: Sequence[str], *, prefetch: int) -> _RabbitmqConsumer:
        consumer = _RabbitmqConsumer(self, list(queues), prefetch)
        consumer.subscription = self._call(
            self.link.consume(queues, prefetch, consumer.on_message), OPERATION_TIMEOUT_S,
            f"consume {list(queues)!r}")
        with self._lock:
            self._consumers.add(consumer)
        return consumer

    def dead_letters(self, limit: int = 100) -> list[tuple[bytes, dict[str, str]]]:
        if limit <= 0:
            return []
        return self._call(self.link.peek_dead(limit), OPERATION_TIMEOUT_S, "peek dead letters")

    def delete_topology(self) -> None:
        """Delete this namespace's exchange, dead-letter queue and the queues this broker
        declared (tests and teardown; delay queues declared elsewhere expire by themselves).
        Closes this broker's consumers first, so that none is restored onto a deleted queue."""
        with self._lock:
            consumers = list(self._consumers)
        for consumer in consumers:
            consumer.close()
        self._call(self.link.delete_topology(), OPERATION_TIMEOUT_S, "delete topology")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            consumers = list(self._consumers)
        for consumer in consumers:
            consumer.close()
        try:
            self._thread.run(self.link.close(), OPERATION_TIMEOUT_S)
        except Exception as exc:  # closing anyway: the loop stops below
            logger.debug("closing the RabbitMQ connection failed: %r", exc)
        self._thread.stop()

    # -- for consumers and deliveries ------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float, what: str) -> T:
        if self._closed:
            coro.close()
            raise BrokerError(f"{what}: the broker is closed")
        return self._run(coro, timeout_s, what)

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float, what: str) -> T:
        """Run on the loop thread and wait, turning driver errors into Conveyor's."""
        try:
            return self._thread.run(coro, timeout_s)
        except ConveyorError:
            raise
        except TimeoutError as exc:
            raise BrokerConnectionError(f"{what}: RabbitMQ at {self.link.safe_url}: {exc!r}") from exc
        except CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(f"{what}: RabbitMQ at {self.link.safe_url}: {exc!r}") from exc
        except DRIVER_ERRORS as exc:
            raise BrokerError(f"{what}: {exc!r}") from exc

    def _forget(self, consumer: _RabbitmqConsumer) -> None:
        with self._lock:
            self._consumers.discard(consumer)

    def _submit(self, action: Coroutine[Any, Any, None]) -> None:
        """Settle a delivery on the loop without waiting (ack, nack)."""
        if self._closed:
            action.close()
            return
        self._thread.submit(action)


class _RabbitmqDelivery:
    __slots__ = ("_broker", "_incoming", "body", "headers", "queue", "redelivered")
    body: bytes
    headers: Mapping[str, str]
    queue: str
    redelivered: bool

    def __init__(self, broker: RabbitmqBroker, incoming: Incoming) -> None:
        self._broker = broker
        self._incoming = incoming
        self.body = incoming.body
        self.headers = incoming.headers
        self.queue = incoming.queue
        self.redelivered = incoming.redelivered

    def __repr__(self) -> str:
        return f"<RabbitmqDelivery queue={self.queue!r} tag={self._incoming.tag}>"

    def ack(self) -> None:
        self._broker._submit(self._broker.link.ack(self._incoming))

    def nack(self, *, requeue: bool, delay_s: float = 0.0) -> None:
        if requeue and delay_s > 0:
            retry = Outgoing(self.body, self.queue, self._incoming.priority, quantize_delay_ms(delay_s),
                             dict(self.headers))
            self._broker._call(self._broker.link.republish(self._incoming, retry),
                               _amqp_loop.OUTAGE_S + OPERATION_TIMEOUT_S, "delayed requeue")
        else:
            self._broker._submit(self._broker.link.nack(self._incoming, requeue=requeue))

    def dead_letter(self, reason: str) -> None:
        headers = {**self.headers, "x-conveyor-reason": reason, "x-conveyor-queue": self.queue}
        dead = Outgoing(self.body, self.queue, self._incoming.priority, 0, headers, dead=True)
        self._broker._call(self._broker.link.republish(self._incoming, dead),
                           _amqp_loop.OUTAGE_S + OPERATION_TIMEOUT_S, "dead letter")

    def renew(self, lease_s: float) -> None:
        """RabbitMQ holds a delivery as long as its channel lives: nothing to renew."""

    def stale(self) -> bool:
        return not self._broker.link.live(self._incoming)


class _RabbitmqConsumer:
    """One channel with basic.qos(prefetch); deliveries wait in a thread-safe buffer."""

    def __init__(self, broker: RabbitmqBroker, queues: list[str], prefetch: int) -> None:
        self._broker = broker
        self._queues = queues
        self._buffer: queue_module.Queue[_RabbitmqDelivery | None] = queue_module.Queue()
        self._closed = False
        self.subscription: Subscription | None = None

    def on_message(self, incoming: Incoming) -> None:
        if self._closed:  # arrived between close() and basic.cancel-ok
            self._broker._submit(self._broker.link.nack(incoming, requeue=True))
            return
        self._buffer.put(_RabbitmqDelivery(self._broker, incoming))

    def get(self, timeout_s: float) -> _RabbitmqDelivery | None:
        deadline = time.monotonic() + timeout_s
        while not self._closed:
            try:
                delivery = self._buffer.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue_module.Empty:
                return None
            if delivery is None:  # woken by close()
                return None
            if not delivery.stale():
                return delivery
            logger.debug("dropped %r: its channel died, RabbitMQ redelivers it", delivery)
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._broker._run(self._stop(), OPERATION_TIMEOUT_S, "close consumer")
        except Exception as exc:  # the channel is going away either way
            logger.debug("closing consumer of %s failed: %r", self._queues, exc)
        self._buffer.put(None)
        self._broker._forget(self)

    async def _stop(self) -> None:
        link = self._broker.link
        if self.subscription is None:
            return
        await link.cancel(self.subscription)
        while True:
            try:
                delivery = self._buffer.get_nowait()
            except queue_module.Empty:
                break
            if delivery is not None:
                await link.nack(delivery._incoming, requeue=True)
        await link.close_channel(self.subscription)
