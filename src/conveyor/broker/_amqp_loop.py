"""The asynchronous half of the RabbitMQ adapter (see ``conveyor.broker.rabbitmq``).

``AmqpSession`` lives on the adapter's ``EventLoopThread`` and owns the robust connection, the
confirming publish channel, topology declarations and publishing through an outage. The
synchronous facade is in ``rabbitmq.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Mapping
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq
import pamqp.exceptions
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
)
from aio_pika.exceptions import ChannelInvalidStateError, ChannelNotFoundEntity, PublishError

from conveyor.errors import BrokerConnectionError, BrokerError, ConfigError
from conveyor.message import CONTENT_TYPE

logger = logging.getLogger(__name__)

T = TypeVar("T")

QUEUE_TYPES = ("classic", "quorum")
OUTAGE_S = 30.0  # how long a publish waits for a lost connection to come back
CONNECT_TIMEOUT_S = 10.0
RECONNECT_INTERVAL_S = 1.0
DELAY_REDECLARE_S = 30.0  # < the 60 s x-expires margin: keeps a delay queue in use alive
MAX_PRIORITY = 9

# Errors meaning "the connection is (or was) gone": worth waiting for the reconnect.
CONNECTION_ERRORS = (aiormq.exceptions.AMQPConnectionError, ChannelInvalidStateError,
                     ConnectionError, OSError)  # OSError includes TimeoutError
DRIVER_ERRORS = (aiormq.exceptions.AMQPError, pamqp.exceptions.PAMQPException, RuntimeError)
# Headers RabbitMQ adds when it dead-letters or redelivers; not ours to pass on.
_BROKER_HEADER_PREFIXES = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")


def resolve_url(url: str, queue_type: str | None,
                environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Split conveyor's own query parameters off an AMQP URL.

    Returns (URL for aio-pika, queue type). The queue type comes from the argument, else
    ``?queue_type=``, else env ``CONVEYOR_QUEUE_TYPE``, else "classic".
    """
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigError(f"not an AMQP URL: {redact(url)}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    from_url = next((v for k, v in query if k == "queue_type"), None)
    kept = [(k, v) for k, v in query if k != "queue_type"]
    env = os.environ if environ is None else environ
    chosen = queue_type or from_url or env.get("CONVEYOR_QUEUE_TYPE") or "classic"
    if chosen not in QUEUE_TYPES:
        raise ConfigError(f"queue_type must be one of {', '.join(QUEUE_TYPES)}, not {chosen!r}")
    return urlunsplit(parts._replace(query=urlencode(kept, quote_via=quote))), chosen


def redact(url: str) -> str:
    """The URL without its password, fit for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{parts.username or ''}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def str_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """Message headers as strings, minus RabbitMQ's own bookkeeping (x-death and the like).

    bytes are decoded as UTF-8; numbers and booleans become their text; tables, arrays
    and timestamps are dropped.
    """
    result: dict[str, str] = {}
    for key, value in (headers or {}).items():
        if key.startswith(_BROKER_HEADER_PREFIXES):
            continue
        if isinstance(value, str):
            result[key] = value
        elif isinstance(value, bytes | bytearray):
            result[key] = bytes(value).decode("utf-8", errors="replace")
        elif isinstance(value, int | float):  # bool is an int
            result[key] = str(value)
    return result


class Outgoing(NamedTuple):
    body: bytes
    queue: str  # logical queue name
    priority: int
    delay_ms: int  # already quantized
    headers: dict[str, str]
    dead: bool = False  # to the dead-letter queue instead


class AmqpSession:
    """Connection, publish channel and topology of one broker; every method runs on the loop."""

    def __init__(self, url: str, namespace: str, queue_type: str) -> None:
        self.url = url
        self.safe_url = redact(url)
        self.namespace = namespace
        self.queue_type = queue_type
        self._declared: dict[str, float] = {}  # AMQP queue name -> loop time of its declaration

    async def connect(self) -> None:
        self._declare_lock = asyncio.Lock()
        kwargs: dict[str, Any] = {}
        if "reconnect_interval=" not in self.url:
            kwargs["reconnect_interval"] = RECONNECT_INTERVAL_S
        try:
            self.connection: AbstractRobustConnection = await aio_pika.connect_robust(
                self.url, timeout=CONNECT_TIMEOUT_S,
                client_properties={"connection_name": f"conveyor {self.namespace}"}, **kwargs,
            )
        except (*CONNECTION_ERRORS, *DRIVER_ERRORS) as exc:
            raise BrokerConnectionError(f"cannot connect to RabbitMQ at {self.safe_url}: {exc!r}") from exc
        self._channel: AbstractRobustChannel = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True)
        self._exchange: AbstractRobustExchange = await self._channel.declare_exchange(
            self.namespace, aio_pika.ExchangeType.DIRECT, durable=True)

    async def disconnect(self) -> None:
        await self.connection.close()

    def queue_arguments(self) -> dict[str, Any]:
        """Arguments of a task queue (consumers must declare it identically)."""
        if self.queue_type == "quorum":
            return {"x-queue-type": "quorum"}  # 3.10 refuses x-max-priority on quorum queues
        return {"x-max-priority": MAX_PRIORITY + 1}

    def _plain_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}

    async def ensure_queue(self, queue: str) -> str:
        name = f"{self.namespace}.{queue}"
        if name not in self._declared:
            async with self._declare_lock:
                if name not in self._declared:
                    amqp_queue = await self._channel.declare_queue(
                        name, durable=True, arguments=self.queue_arguments())
                    await amqp_queue.bind(self._exchange, routing_key=queue)
                    self._declared[name] = 0.0
        return name

    async def ensure_dead(self) -> str:
        name = f"{self.namespace}.dead"
        if name not in self._declared:
            async with self._declare_lock:
                if name not in self._declared:
                    await self._channel.declare_queue(name, durable=True, arguments=self._plain_arguments())
                    self._declared[name] = 0.0
        return name

    async def ensure_delay_queue(self, queue: str, delay_ms: int) -> str:
        name = f"{self.namespace}.delay.{queue}.{delay_ms}"
        loop = asyncio.get_running_loop()
        if loop.time() - self._declared.get(name, -math.inf) >= DELAY_REDECLARE_S:
            async with self._declare_lock:
                if loop.time() - self._declared.get(name, -math.inf) >= DELAY_REDECLARE_S:
                    arguments = {
                        **self._plain_arguments(),
                        "x-message-ttl": delay_ms,
                        "x-dead-letter-exchange": self.namespace,
                        "x-dead-letter-routing-key": queue,
                        "x-expires": delay_ms + 60_000,
                    }
                    # robust=False: a reconnect must not resurrect delay queues that expired.
                    await self._channel.declare_queue(name, durable=True, arguments=arguments, robust=False)
                    self._declared[name] = loop.time()
        return name

    def _target_name(self, out: Outgoing) -> str:
        if out.dead:
            return f"{self.namespace}.dead"
        if out.delay_ms:
            return f"{self.namespace}.delay.{out.queue}.{out.delay_ms}"
        return f"{self.namespace}.{out.queue}"

    async def _publish_one(self, out: Outgoing) -> None:
        message = aio_pika.Message(
            out.body, headers=dict(out.headers), content_type=CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, priority=out.priority,
        )
        if out.dead:
            await self._channel.default_exchange.publish(message, await self.ensure_dead())
        elif out.delay_ms:
            await self.ensure_queue(out.queue)  # else the expired message has nowhere to go
            name = await self.ensure_delay_queue(out.queue, out.delay_ms)
            await self._channel.default_exchange.publish(message, name)
        else:
            await self.ensure_queue(out.queue)
            await self._exchange.publish(message, routing_key=out.queue)

    async def publish_all(self, outgoing: list[Outgoing]) -> None:
        """Publish all, await all confirms; retry the failed ones through an outage."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OUTAGE_S
        pending, redeclared, pause_s = outgoing, False, 0.1
        while True:
            try:
                results = await asyncio.wait_for(
                    asyncio.gather(*(self._publish_one(o) for o in pending), return_exceptions=True),
                    max(deadline - loop.time(), 0.1))
            except TimeoutError as exc:
                raise self._outage_error() from exc
            failed: list[Outgoing] = []
            for out, result in zip(pending, results, strict=True):
                if result is None:
                    continue
                if isinstance(result, PublishError) and not redeclared:
                    self._declared.pop(self._target_name(out), None)  # deleted or expired: declare again
                elif not isinstance(result, CONNECTION_ERRORS):
                    raise BrokerError(f"publish to queue {out.queue!r} failed: {result!r}") from result
                failed.append(out)
            if not failed:
                return
            redeclared = redeclared or any(isinstance(r, PublishError) for r in results)
            if loop.time() >= deadline:
                raise self._outage_error()
            logger.debug("publish of %d message(s) failed; retrying", len(failed))
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 1.0)
            pending = failed

    def _outage_error(self) -> BrokerConnectionError:
        return BrokerConnectionError(f"publish: RabbitMQ at {self.safe_url} unreachable for {OUTAGE_S:g} s")

    async def peek_dead(self, limit: int) -> list[tuple[bytes, dict[str, str]]]:
        name = await self.ensure_dead()
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            queue = await channel.declare_queue(
                name, durable=True, arguments=self._plain_arguments(), robust=False)
            got: list[AbstractIncomingMessage] = []
            while len(got) < limit:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                got.append(message)
            if got:  # give them all back, in place
                await got[-1].nack(multiple=True, requeue=True)
            return [(m.body, str_headers(m.headers)) for m in got]
        finally:
            await channel.close()

    async def delete_topology(self) -> None:
        for name in sorted({*self._declared, f"{self.namespace}.dead"}):
            with contextlib.suppress(ChannelNotFoundEntity):
                await self._channel.queue_delete(name)
        await self._channel.exchange_delete(self.namespace)
        self._declared.clear()
