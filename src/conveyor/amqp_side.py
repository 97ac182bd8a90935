"""A small AMQP consumer of one queue, for the center's side jobs that need what the Broker port
does not carry: the report listener (AMQP ``reply_to`` and ``correlation_id``, answers to the
default exchange) and adopted queues (``message_id``, a queue Conveyor does not own).

It runs aiormq on its own event loop thread with its own connection, reconnecting after a
pause when the connection drops (RabbitMQ then redelivers what was unacked: handlers must be
idempotent, which the store's compare-and-set and idempotency keys make them). Deliveries are
handled one at a time, in order, by a blocking ``handle`` function in one helper thread; its
``Settle`` says what to publish (with publisher confirms) before the delivery is acked, or that
it goes back to the queue after a pause. The queue is only ever declared passively: it must
exist, and its arguments are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from conveyor.broker._amqp_loop import redact
from conveyor.errors import BrokerConnectionError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Incoming:
    """One delivery: the body and the AMQP properties side jobs care about."""

    body: bytes
    redelivered: bool = False
    reply_to: str | None = None
    correlation_id: str | None = None
    message_id: str | None = None
    content_type: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to publish (confirmed) before the delivery is settled."""

    body: bytes
    routing_key: str
    exchange: str = ""
    correlation_id: str | None = None
    headers: dict[str, Any] | None = None
    persistent: bool = True
    priority: int | None = None
    content_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Settle:
    action: Literal["ack", "requeue"] = "ack"
    publish: tuple[Outgoing, ...] = ()
    pause_s: float = 0.0  # requeue: wait this long first (the store or broker is in trouble)


Handler = Callable[[Incoming], Settle]


class AmqpSideConsumer:
    def __init__(self, url: str, queue: str, handle: Handler, *, prefetch: int = 32, name: str = "side",
                 reconnect_s: float = 1.0) -> None:
        self.url = url
        self.queue = queue
        self.handle = handle
        self.prefetch = prefetch
        self.name = name
        self.reconnect_s = reconnect_s
        self.handled = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"conveyor-{name}", daemon=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"conveyor-{name}-handle")
        self._ready = threading.Event()
        self._first_error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._task: asyncio.Future[None] | None = None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Connect and start consuming; raise BrokerConnectionError if that fails."""
        self._thread.start()
        self._task = asyncio.run_coroutine_threadsafe(self._run(), self._loop)  # type: ignore[assignment]
        if not self._ready.wait(timeout_s):
            error = self._first_error
            self.stop()
            raise BrokerConnectionError(
                f"{self.name}: cannot consume {self.queue!r} at {redact(self.url)}: {error!r}")

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._task is not None:
            with contextlib.suppress(Exception):
                self._task.result(timeout_s)  # type: ignore[call-arg]
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._loop.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        self._stopping = asyncio.Event()
        while not self._stopping.is_set():
            try:
                await self._session()
            except Exception as exc:  # the connection or channel died: reconnect
                if self._first_error is None:
                    self._first_error = exc
                if not self._stopping.is_set():
                    log.warning("%s: AMQP session ended (%r); reconnecting in %.1f s", self.name, exc,
                                self.reconnect_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.reconnect_s)

    async def _session(self) -> None:
        assert self._stopping is not None
        connection = await aiormq.connect(self.url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.basic_qos(prefetch_count=self.prefetch)
            await channel.queue_declare(self.queue, passive=True)  # exists; never redeclared
            inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()

            async def on_message(message: DeliveredMessage) -> None:
                await inbox.put(message)

            await channel.basic_consume(self.queue, on_message, no_ack=False)
            self._ready.set()
            while not self._stopping.is_set():
                if connection.is_closed or channel.is_closed:
                    raise ConnectionError("connection closed")
                try:
                    message = await asyncio.wait_for(inbox.get(), 0.2)
                except TimeoutError:
                    continue
                await self._process(channel, message)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    async def _process(self, channel: aiormq.abc.AbstractChannel, message: DeliveredMessage) -> None:
        props = message.header.properties
        delivery = message.delivery
        assert isinstance(delivery, Basic.Deliver) and delivery.delivery_tag is not None
        tag = delivery.delivery_tag
        incoming = Incoming(
            body=message.body, redelivered=bool(delivery.redelivered), reply_to=props.reply_to,
            correlation_id=props.correlation_id, message_id=props.message_id,
            content_type=props.content_type, headers=dict(props.headers or {}),
        )
        loop = asyncio.get_running_loop()
        try:
            settle = await loop.run_in_executor(self._executor, self.handle, incoming)
        except Exception:
            log.exception("%s: handling a delivery failed; it goes back to the queue", self.name)
            settle = Settle(action="requeue", pause_s=self.reconnect_s)
        for out in settle.publish:
            await channel.basic_publish(out.body, exchange=out.exchange, routing_key=out.routing_key,
                                        properties=_properties(out))
        if settle.action == "ack":
            await channel.basic_ack(tag)
            self.handled += 1
        else:
            await asyncio.sleep(settle.pause_s)
            await channel.basic_nack(tag, requeue=True)


def _properties(out: Outgoing) -> Basic.Properties:
    return Basic.Properties(
        content_type=out.content_type, delivery_mode=2 if out.persistent else 1,
        correlation_id=out.correlation_id, headers=out.headers, priority=out.priority,
    )
