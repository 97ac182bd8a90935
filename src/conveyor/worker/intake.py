"""The broker side of the worker's hot path (see ``worker/backend.py``).

``AmqpIntake`` runs an ``AmqpLink`` on the worker's own event loop: a delivery goes from the
socket to the claim without crossing a thread, and acks go out in batches, ``multiple=True``
for every run of consecutive delivery tags whose outcomes are stored (single acks for the
others, so a long task never holds back the acks of short ones behind it).

``PortIntake`` adapts any synchronous ``Broker`` (the embedded broker alone, or another
implementation) on a thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aiormq.abc

from conveyor.broker._amqp_loop import AmqpLink, Incoming, Outgoing, Subscription
from conveyor.broker.base import Broker, Consumer, Delivery
from conveyor.broker.rabbitmq import outgoing, quantize_delay_ms
from conveyor.flow.routing import NODE_QUEUE_PREFIX
from conveyor.model import Task
from conveyor.publisher import publish_item, publish_tasks
from conveyor.worker.backend import Arrival, StoreThread

log = logging.getLogger(__name__)


class _Tags:
    """Delivery tags of one channel in arrival order: ``ready`` to ack (outcome stored), or
    ``gone`` (acked or nacked alone). A multiple ack must name a tag still outstanding."""

    def __init__(self) -> None:
        self.order: collections.deque[int] = collections.deque()
        self.ready: set[int] = set()
        self.gone: set[int] = set()


class AmqpIntake:
    lease_based = False

    def __init__(self, url: str, namespace: str, queue_type: str, *, name: str) -> None:
        self.link = AmqpLink(url, namespace, queue_type, name=name)
        self._buffer: collections.deque[Arrival] = collections.deque()
        self._arrived = asyncio.Event()
        self._subscription: Subscription | None = None
        self._own: Subscription | None = None  # the node's own queue (routing), on a channel of its own
        self._channels: dict[aiormq.abc.AbstractChannel, _Tags] = {}

    async def start(self, queues: Sequence[str], concurrency: int, prefetch: int) -> None:
        await self.link.connect()
        for queue in queues:
            await self.link.ensure_queue(queue)
        own = [q for q in queues if q.startswith(NODE_QUEUE_PREFIX)]
        queues = [q for q in queues if not q.startswith(NODE_QUEUE_PREFIX)]
        self._subscription = await self.link.consume(queues, concurrency + prefetch, self._on_message)
        if own:  # apart: the queues' consumer keeps its per-consumer prefetch (cheaper than a channel-wide one)
            self._own = await self.link.consume(own, max(1, prefetch), self._on_message)

    def _on_message(self, incoming: Incoming) -> None:
        tags = self._channels.get(incoming.channel)
        if tags is None:
            for channel in [c for c in self._channels if c.is_closed]:
                del self._channels[channel]  # a dead channel's deliveries come again
            tags = self._channels[incoming.channel] = _Tags()
        tags.order.append(incoming.tag)
        self._buffer.append(Arrival(incoming.body, incoming.queue, incoming.redelivered, incoming))
        self._arrived.set()

    async def wait(self, timeout_s: float) -> None:
        if not self._buffer:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout_s)

    def untake(self, arrivals: Sequence[Arrival]) -> None:
        self._buffer.extendleft(reversed(arrivals))
        self._arrived.set()

    async def take(self, max_n: int) -> list[Arrival]:
        taken: list[Arrival] = []
        while self._buffer and len(taken) < max_n:
            arrival = self._buffer.popleft()
            if self.link.live(arrival.handle):
                taken.append(arrival)
        return taken

    async def ack(self, arrivals: Sequence[Arrival]) -> None:
        by_channel: dict[aiormq.abc.AbstractChannel, list[Incoming]] = {}
        for arrival in arrivals:
            if not arrival.settled:
                arrival.settled = True
                incoming: Incoming = arrival.handle
                by_channel.setdefault(incoming.channel, []).append(incoming)
        for channel, batch in by_channel.items():
            await self._ack_channel(channel, batch)

    async def _ack_channel(self, channel: aiormq.abc.AbstractChannel, batch: list[Incoming]) -> None:
        tags = self._channels.get(channel)
        live = [i for i in batch if self.link.live(i)]
        if tags is None or not live:
            return
        tags.ready.update(i.tag for i in live)
        upto = 0
        while tags.order and (tags.order[0] in tags.ready or tags.order[0] in tags.gone):
            tag = tags.order.popleft()
            if tag in tags.ready:
                tags.ready.discard(tag)
                upto = tag
            else:
                tags.gone.discard(tag)
        if upto:
            await self.link.ack(_with_tag(live[0], upto), multiple=True)
        for incoming in live:
            if incoming.tag in tags.ready:  # behind an unsettled one: ack alone, now
                tags.ready.discard(incoming.tag)
                tags.gone.add(incoming.tag)
                await self.link.ack(incoming)

    def _forget(self, incoming: Incoming) -> None:
        tags = self._channels.get(incoming.channel)
        if tags is not None:
            tags.gone.add(incoming.tag)

    async def requeue(self, arrival: Arrival, delay_s: float) -> None:
        if arrival.settled:
            return
        arrival.settled = True
        incoming: Incoming = arrival.handle
        if delay_s > 0:
            copy = Outgoing(incoming.body, incoming.queue, incoming.priority, quantize_delay_ms(delay_s),
                            dict(incoming.headers))
            await self.link.republish(incoming, copy)
        else:
            await self.link.nack(incoming, requeue=True)
        self._forget(incoming)

    async def dead_letter(self, arrival: Arrival, reason: str) -> None:
        if arrival.settled:
            return
        arrival.settled = True
        incoming: Incoming = arrival.handle
        headers = {**incoming.headers, "x-conveyor-reason": reason, "x-conveyor-queue": incoming.queue}
        await self.link.republish(incoming, Outgoing(incoming.body, incoming.queue, incoming.priority, 0, headers,
                                                     dead=True))
        self._forget(incoming)

    async def renew(self, arrivals: Sequence[Arrival], lease_s: float) -> None:
        """RabbitMQ holds deliveries by channel: nothing to renew."""

    async def publish(self, tasks: Sequence[Task], now: float) -> None:
        await self.link.publish_all(outgoing(publish_item(t, now) for t in tasks))

    async def stop_taking(self) -> None:
        for subscription in (self._subscription, self._own):
            if subscription is not None:
                await self.link.cancel(subscription)
        while self._buffer:
            arrival = self._buffer.popleft()
            await self.requeue(arrival, 0.0)

    async def close(self) -> None:
        await self.link.close()


def _with_tag(incoming: Incoming, tag: int) -> Incoming:
    return Incoming(b"", {}, incoming.queue, False, 0, tag, incoming.channel, incoming.generation)


class PortIntake:
    """A synchronous ``Broker`` on a thread of its own."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.lease_based = broker.lease_based
        self._consumer: Consumer | None = None
        self._thread = StoreThread(broker)  # type: ignore[arg-type]  # any object: one call at a time
        self._waiting: list[Arrival] = []  # received by ``wait``, not yet taken
        self._own: Consumer | None = None

    async def start(self, queues: Sequence[str], concurrency: int, prefetch: int) -> None:
        for queue in queues:
            await self._call(self.broker.declare_queue, queue)
        own = [q for q in queues if q.startswith(NODE_QUEUE_PREFIX)]
        queues = [q for q in queues if not q.startswith(NODE_QUEUE_PREFIX)]
        self._consumer = await self._call(self.broker.consume, queues, prefetch=concurrency + prefetch)
        if own:  # the node's own queue (routing), by a consumer of its own
            self._own = await self._call(self.broker.consume, own, prefetch=max(1, prefetch))

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._thread.call(fn, *args, **kwargs)

    async def wait(self, timeout_s: float) -> None:
        consumer = self._consumer
        assert consumer is not None
        if not self._waiting:
            delivery: Delivery | None = await self._call(consumer.get, timeout_s)
            if delivery is not None:
                self._waiting.append(Arrival(delivery.body, delivery.queue, delivery.redelivered, delivery))

    def untake(self, arrivals: Sequence[Arrival]) -> None:
        self._waiting[:0] = arrivals

    async def take(self, max_n: int) -> list[Arrival]:
        consumer = self._consumer
        assert consumer is not None
        taken, self._waiting = self._waiting[:max_n], self._waiting[max_n:]

        own = self._own

        def more(n: int) -> list[Delivery]:
            got: list[Delivery] = []
            while len(got) < n:
                delivery = consumer.get(0.0)
                if delivery is None:
                    delivery = own.get(0.0) if own is not None else None
                    if delivery is None:
                        break
                got.append(delivery)
            return got

        if len(taken) < max_n:
            extra: list[Delivery] = await self._call(more, max_n - len(taken))
            taken += [Arrival(d.body, d.queue, d.redelivered, d) for d in extra]
        return taken

    async def ack(self, arrivals: Sequence[Arrival]) -> None:
        pending = [a for a in arrivals if not a.settled]
        for arrival in pending:
            arrival.settled = True
        if pending:
            await self._call(lambda: [a.handle.ack() for a in pending])

    async def requeue(self, arrival: Arrival, delay_s: float) -> None:
        if not arrival.settled:
            arrival.settled = True
            await self._call(arrival.handle.nack, requeue=True, delay_s=delay_s)

    async def dead_letter(self, arrival: Arrival, reason: str) -> None:
        if not arrival.settled:
            arrival.settled = True
            await self._call(arrival.handle.dead_letter, reason)

    async def renew(self, arrivals: Sequence[Arrival], lease_s: float) -> None:
        live = [a for a in arrivals if not a.settled]
        if live:
            await self._call(lambda: [a.handle.renew(lease_s) for a in live])

    async def publish(self, tasks: Sequence[Task], now: float) -> None:
        await self._call(publish_tasks, self.broker, tasks, at=now)

    async def stop_taking(self) -> None:
        for consumer in (self._consumer, self._own):
            if consumer is not None:
                await self._call(consumer.close)

    async def close(self) -> None:
        self._thread.close()
