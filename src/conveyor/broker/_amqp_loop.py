"""The asynchronous half of the RabbitMQ adapter, on aiormq (see ``conveyor.broker.rabbitmq``).

``AmqpLink`` owns one AMQP connection and its channels on the caller's event loop: the
synchronous ``RabbitmqBroker`` runs it on a loop thread of its own, and the worker runs it on
its own event loop, so a delivery reaches the worker without crossing a thread.

Failover: the URL may name several hosts (``amqp://user:pass@h1:5672,h2:5673/vhost``), the
nodes of one RabbitMQ cluster. The link connects to the first that answers and, when its
connection is lost, tries the others in turn, every ``reconnect_interval`` (1 s) until one
answers. After a reconnect it re-declares the topology it knows, reopens a channel whose
restore failed (a classic queue whose home node is down answers NOT_FOUND until the node is
back) and restores its consumers. Quorum queues (``?queue_type=quorum``) are what a cluster
wants: they survive the loss of a minority of nodes, where a classic queue is down with its
node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import aiormq
import aiormq.abc
import pamqp.exceptions
from pamqp import commands as spec

from conveyor.errors import BrokerConnectionError, BrokerError, ConfigError
from conveyor.message import CONTENT_TYPE

logger = logging.getLogger(__name__)

QUEUE_TYPES = ("classic", "quorum")
OUTAGE_S = 30.0  # how long a publish waits for a lost connection to come back
CONNECT_TIMEOUT_S = 10.0
HEARTBEAT_S = 10  # unless the URL says (?heartbeat=): a frozen or cut-off peer is noticed in ~20 s
RECONNECT_INTERVAL_S = 1.0
DELAY_REDECLARE_S = 30.0  # < the 60 s x-expires margin: keeps a delay queue in use alive
MAX_PRIORITY = 9
PERSISTENT = 2

# Errors meaning "the connection or channel is (or was) gone": worth waiting for the reconnect.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError, aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed, ConnectionError, OSError)
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError, pamqp.exceptions.PAMQPException, RuntimeError)
# Headers RabbitMQ adds when it dead-letters or redelivers; not ours to pass on.
_BROKER_HEADER_PREFIXES = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")

Callback = Callable[["Incoming"], None]


# -- URLs -----------------------------------------------------------------------------------------
def resolve_url(url: str, queue_type: str | None,
                environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Split conveyor's own query parameters off an AMQP URL.

    Returns (URL for the AMQP client, queue type). The queue type comes from the argument, else
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


def split_hosts(url: str) -> list[str]:
    """One URL per host of ``amqp://user:pass@h1:5672,h2:5673/vhost?...`` (a cluster), each
    with the same credentials, vhost and options; a plain URL comes back alone."""
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    urls = []
    for host in hostlist.split(","):
        host = host.strip()
        if not host:
            raise ConfigError(f"empty host in AMQP URL {redact(url)}")
        if host.startswith("["):  # IPv6 literal
            end = host.find("]")
            port = host[end + 2:] if host[end + 1:end + 2] == ":" else ""
        else:
            port = host.rpartition(":")[2] if ":" in host else ""
        if port and not port.isdigit():
            raise ConfigError(f"bad port {port!r} in AMQP URL {redact(url)}")
        netloc = f"{userinfo}@{host}" if userinfo else host
        urls.append(urlunsplit(parts._replace(netloc=netloc)))
    return urls


def redact(url: str) -> str:
    """The URL without its password, fit for error messages and logs (any host list)."""
    parts = urlsplit(url)
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}@{hostlist}"))


def vhost_of(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


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


def describe_connect_error(exc: BaseException, url: str) -> str:
    """A connection failure in words an operator can act on (no password)."""
    text = repr(exc)
    if isinstance(exc, aiormq.exceptions.ConnectionNotAllowed) or "NOT_ALLOWED" in text:
        return f"RabbitMQ at {redact(url)}: vhost {vhost_of(url)!r} does not exist or access to it is refused"
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError) \
            or "ACCESS_REFUSED" in text:
        return f"RabbitMQ at {redact(url)}: login refused (check the user and password)"
    return f"cannot connect to RabbitMQ at {redact(url)}: {text}"


class _Refused(Exception):
    """RabbitMQ nacked a publish (it could not take the message): publish it again."""


class Outgoing(NamedTuple):
    body: bytes
    queue: str  # logical queue name
    priority: int
    delay_ms: int  # already quantized
    headers: dict[str, str]
    dead: bool = False  # to the dead-letter queue instead


@dataclass(eq=False, slots=True)
class Incoming:
    """One delivered message and the channel it came on (acks go back on that channel)."""

    body: bytes
    headers: dict[str, str]
    queue: str  # logical queue name
    redelivered: bool
    priority: int
    tag: int
    channel: aiormq.abc.AbstractChannel
    generation: int  # the link's connection generation when it arrived


@dataclass(eq=False)
class Subscription:
    """A consumer: queues, prefetch and a callback; restored on a new channel after a reconnect."""

    queues: list[str]
    prefetch: int
    callback: Callback
    raw: bool = False  # queues are AMQP names used as they are (declared passively), not logical
    channel: aiormq.abc.AbstractChannel | None = None
    tags: list[str] = field(default_factory=list)
    closed: bool = False


class AmqpLink:
    """Connection (with failover), publish channel, topology and consumers; every coroutine
    runs on the loop that called ``connect``."""

    def __init__(self, url: str, namespace: str, queue_type: str, *, name: str = "conveyor") -> None:
        self.url = url
        self.safe_url = redact(url)
        self.hosts = split_hosts(url)
        self.namespace = namespace
        self.queue_type = queue_type
        self.name = name
        self.generation = 0
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._declared: dict[str, float] = {}  # AMQP queue name -> loop time of its declaration
        self._bound: set[str] = set()
        self._subscriptions: list[Subscription] = []
        self._host_index = 0
        self._closed = False
        self._supervisor: asyncio.Task[None] | None = None

    # -- connecting -------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect to the first host that answers (raise BrokerConnectionError if none does)
        and start watching the connection."""
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._declare_lock = asyncio.Lock()
        errors = []
        for _ in range(len(self.hosts)):
            try:
                await self._open()
                break
            except BrokerError:
                raise
            except Exception as exc:
                errors.append(describe_connect_error(exc, self.hosts[self._host_index]))
                self._host_index = (self._host_index + 1) % len(self.hosts)
        else:
            raise BrokerConnectionError("; ".join(errors))
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def _open(self) -> None:
        url = self.hosts[self._host_index]
        if "heartbeat=" not in url:
            url += ("&" if "?" in url else "?") + f"heartbeat={HEARTBEAT_S}"
        connection = await asyncio.wait_for(
            aiormq.connect(url, client_properties={"connection_name": self.name}), CONNECT_TIMEOUT_S)
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.exchange_declare(self.namespace, exchange_type="direct", durable=True)
        except BaseException:
            await _quietly(connection.close())
            raise
        self._connection, self._channel = connection, channel
        self.generation += 1
        self._declared.clear()
        self._bound.clear()
        self._ready.set()

    async def _supervise(self) -> None:
        """Wait for the connection to close; reconnect (next host) and restore consumers."""
        while not self._closed:
            connection = self._connection
            assert connection is not None
            with contextlib.suppress(BaseException):
                await connection.closing
            if self._closed:
                return
            self._ready.clear()
            logger.warning("connection to RabbitMQ at %s lost; reconnecting", redact(self.hosts[self._host_index]))
            await self._reconnect()

    async def _reconnect(self) -> None:
        pause = RECONNECT_INTERVAL_S
        while not self._closed:
            self._host_index = (self._host_index + 1) % len(self.hosts) if len(self.hosts) > 1 else 0
            try:
                await self._open()
                for sub in list(self._subscriptions):
                    if not sub.closed:
                        await self._start(sub)
                logger.info("reconnected to RabbitMQ at %s", redact(self.hosts[self._host_index]))
                return
            except Exception as exc:
                self._ready.clear()
                if self._connection is not None:
                    await _quietly(self._connection.close())
                logger.debug("reconnect to %s failed: %r", redact(self.hosts[self._host_index]), exc)
                await asyncio.sleep(pause * random.uniform(0.8, 1.2))

    async def ready(self, timeout_s: float) -> None:
        """Wait until connected, or raise BrokerConnectionError after ``timeout_s``."""
        if self._closed:
            raise BrokerError("the broker is closed")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        except TimeoutError:
            raise BrokerConnectionError(
                f"RabbitMQ at {self.safe_url} unreachable for {timeout_s:g} s") from None

    async def channel(self) -> aiormq.abc.AbstractChannel:
        """The publish channel, reopened if it was closed while the connection lived on."""
        await self.ready(OUTAGE_S)
        channel = self._channel
        if channel is None or channel.is_closed:
            async with self._lock:
                if self._channel is None or self._channel.is_closed:
                    assert self._connection is not None
                    self._channel = await self._connection.channel(publisher_confirms=True)
                    self._declared.clear()
                channel = self._channel
        return channel

    async def _renew_channel(self, used: aiormq.abc.AbstractChannel | None) -> None:
        """Close the publish channel ``used`` (unless it was replaced already): ``channel()``
        opens a new one, and topology is declared again on it."""
        async with self._lock:
            if used is not None and used is self._channel and not used.is_closed:
                await _quietly(used.close())

    async def close(self) -> None:
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await _quietly(self._supervisor)
        if self._connection is not None:
            await _quietly(self._connection.close())

    # -- topology ---------------------------------------------------------------------------
    def queue_arguments(self) -> dict[str, Any]:
        """Arguments of a task queue (consumers must declare it identically)."""
        if self.queue_type == "quorum":
            return {"x-queue-type": "quorum"}  # 3.10 refuses x-max-priority on quorum queues
        return {"x-max-priority": MAX_PRIORITY + 1}

    def _plain_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}

    def amqp_name(self, queue: str) -> str:
        return f"{self.namespace}.{queue}"

    async def ensure_queue(self, queue: str) -> str:
        name = self.amqp_name(queue)
        if name not in self._declared:
            async with self._declare_lock:
                if name not in self._declared:
                    channel = await self.channel()
                    await channel.queue_declare(name, durable=True, arguments=self.queue_arguments())
                    await channel.queue_bind(name, self.namespace, routing_key=queue)
                    self._declared[name] = 0.0
        return name

    async def ensure_dead(self) -> str:
        name = f"{self.namespace}.dead"
        if name not in self._declared:
            async with self._declare_lock:
                if name not in self._declared:
                    channel = await self.channel()
                    await channel.queue_declare(name, durable=True, arguments=self._plain_arguments())
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
                    channel = await self.channel()
                    await channel.queue_declare(name, durable=True, arguments=arguments)
                    self._declared[name] = loop.time()
        return name

    def _target(self, out: Outgoing) -> str:
        if out.dead:
            return f"{self.namespace}.dead"
        if out.delay_ms:
            return f"{self.namespace}.delay.{out.queue}.{out.delay_ms}"
        return self.amqp_name(out.queue)

    # -- publishing -------------------------------------------------------------------------
    async def _publish_one(self, out: Outgoing) -> None:
        properties = spec.Basic.Properties(
            content_type=CONTENT_TYPE, delivery_mode=PERSISTENT, priority=out.priority,
            headers=dict(out.headers) if out.headers else None)
        if out.dead:
            exchange, key = "", await self.ensure_dead()
        elif out.delay_ms:
            await self.ensure_queue(out.queue)  # else the expired message has nowhere to go
            exchange, key = "", await self.ensure_delay_queue(out.queue, out.delay_ms)
        else:
            await self.ensure_queue(out.queue)
            exchange, key = self.namespace, out.queue
        channel = await self.channel()
        confirmation = await channel.basic_publish(out.body, exchange=exchange, routing_key=key,
                                                   properties=properties, mandatory=True)
        if not isinstance(confirmation, spec.Basic.Ack):
            raise _Refused(f"RabbitMQ did not confirm the publish: {confirmation!r}")

    async def publish_all(self, outgoing: Sequence[Outgoing], outage_s: float | None = None) -> None:
        """Publish all, await all confirms; retry the failed ones through an outage of up to
        ``outage_s`` (default ``OUTAGE_S``), then raise BrokerConnectionError. A publish RabbitMQ
        refuses (nack) is sent again, first with its queue declared afresh, then on a new
        channel, until the same deadline, then BrokerError."""
        loop = asyncio.get_running_loop()
        limit = OUTAGE_S if outage_s is None else outage_s
        deadline = loop.time() + limit
        pending, redeclared, pause_s = list(outgoing), False, 0.05
        while True:
            used = self._channel
            try:
                results = await asyncio.wait_for(
                    asyncio.gather(*(self._publish_one(o) for o in pending), return_exceptions=True),
                    max(deadline - loop.time(), 0.1))
            except (TimeoutError, BrokerConnectionError) as exc:
                raise BrokerConnectionError(
                    f"publish: RabbitMQ at {self.safe_url} unreachable for {limit:g} s") from exc
            failed: list[Outgoing] = []
            refusal: BaseException | None = None
            for out, result in zip(pending, results, strict=True):
                if result is None:
                    continue
                if isinstance(result, aiormq.exceptions.DeliveryError | _Refused):  # nack, or returned
                    refusal = result
                    if not redeclared:
                        self._declared.pop(self._target(out), None)  # deleted or expired: declare again
                elif isinstance(result, aiormq.exceptions.ChannelNotFoundEntity):
                    self._declared.clear()
                elif not isinstance(result, (*CONNECTION_ERRORS, BrokerConnectionError)):
                    raise BrokerError(f"publish to queue {out.queue!r} failed: {result!r}") from result
                failed.append(out)
            if not failed:
                return
            if refusal is not None and redeclared:
                # Refused again once declared afresh. Seen on RabbitMQ 3.10: a channel opened while
                # a quorum queue elects a new leader (a client failing over from the node that
                # held it) nacks every publish to that queue for as long as the old leader's node
                # is down; a new channel does not. Publish again on a new one, until the deadline.
                await self._renew_channel(used)
            redeclared = redeclared or refusal is not None
            if loop.time() >= deadline:
                if refusal is not None:
                    raise BrokerError(f"publish to queue {failed[0].queue!r} refused by RabbitMQ for {limit:g} s: "
                                      f"{refusal!r}") from refusal
                raise BrokerConnectionError(f"publish: RabbitMQ at {self.safe_url} unreachable for {limit:g} s")
            logger.debug("publish of %d message(s) failed; retrying", len(failed))
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 1.0)
            pending = failed

    # -- consuming --------------------------------------------------------------------------
    async def consume(self, queues: Sequence[str], prefetch: int, callback: Callback, *,
                      raw: bool = False) -> Subscription:
        """Start a consumer of ``queues`` (logical names; AMQP names declared passively when
        ``raw``) holding at most ``prefetch`` unacked deliveries; ``callback`` runs on the loop
        for each. It is restored on a new channel after a reconnect."""
        sub = Subscription(list(queues), max(1, prefetch), callback, raw=raw)
        await self.ready(OUTAGE_S)
        await self._start(sub)
        self._subscriptions.append(sub)
        return sub

    async def _start(self, sub: Subscription) -> None:
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            # Global (per-channel) QoS bounds the sum over several queues; quorum refuses it.
            shared = self.queue_type == "classic" and len(sub.queues) > 1 and not sub.raw
            await channel.basic_qos(prefetch_count=sub.prefetch, global_=shared)
            generation = self.generation
            sub.tags = []
            for queue in sub.queues:
                if sub.raw:
                    await channel.queue_declare(queue, passive=True)
                    name = queue
                else:
                    name = self.amqp_name(queue)
                    await channel.queue_declare(name, durable=True, arguments=self.queue_arguments())
                    await channel.queue_bind(name, self.namespace, routing_key=queue)
                ok = await channel.basic_consume(name, self._receiver(sub, queue, channel, generation))
                assert ok.consumer_tag is not None
                sub.tags.append(ok.consumer_tag)
        except BaseException:
            await _quietly(channel.close())
            raise
        sub.channel = channel
        channel.closing.add_done_callback(lambda _: self._on_channel_closed(sub, channel))

    def _receiver(self, sub: Subscription, queue: str, channel: aiormq.abc.AbstractChannel,
                  generation: int) -> Callable[[aiormq.abc.DeliveredMessage], Coroutine[Any, Any, None]]:
        callback = sub.callback

        async def receive(message: aiormq.abc.DeliveredMessage) -> None:
            props = message.header.properties
            delivery = message.delivery
            assert isinstance(delivery, spec.Basic.Deliver)
            callback(Incoming(message.body, str_headers(props.headers), queue, bool(delivery.redelivered),
                              min(max(props.priority or 0, 0), MAX_PRIORITY), delivery.delivery_tag or 0,
                              channel, generation))

        return receive

    def _on_channel_closed(self, sub: Subscription, channel: aiormq.abc.AbstractChannel) -> None:
        """A consumer channel closed while the connection lives on (a consumer_timeout, a queue
        deleted): open a new one. A lost connection is the supervisor's to handle."""
        if sub.closed or self._closed or sub.channel is not channel:
            return
        if self._connection is None or self._connection.is_closed or not self._ready.is_set():
            return
        logger.warning("consumer channel of %s closed; reopening", sub.queues)
        asyncio.get_running_loop().create_task(self._restart(sub))

    async def _restart(self, sub: Subscription) -> None:
        pause = RECONNECT_INTERVAL_S
        while not (sub.closed or self._closed):
            try:
                await self.ready(OUTAGE_S)
                await self._start(sub)
                return
            except Exception as exc:
                logger.debug("reopening the consumer of %s failed: %r", sub.queues, exc)
                await asyncio.sleep(pause)

    async def cancel(self, sub: Subscription) -> None:
        """Stop a consumer; its unacked deliveries go back to their queues when its channel closes."""
        sub.closed = True
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(sub)
        channel = sub.channel
        if channel is not None and not channel.is_closed:
            for tag in sub.tags:
                await _quietly(channel.basic_cancel(tag))

    async def close_channel(self, sub: Subscription) -> None:
        if sub.channel is not None:
            await _quietly(sub.channel.close())

    # -- settling deliveries ----------------------------------------------------------------
    def live(self, incoming: Incoming) -> bool:
        """False once the delivery's channel died: RabbitMQ has requeued it already."""
        return incoming.generation == self.generation and not incoming.channel.is_closed

    async def ack(self, incoming: Incoming, *, multiple: bool = False) -> None:
        if self.live(incoming):
            await _settle(incoming.channel.basic_ack(incoming.tag, multiple=multiple, wait=False), "ack")

    async def nack(self, incoming: Incoming, *, requeue: bool) -> None:
        if self.live(incoming):
            await _settle(incoming.channel.basic_nack(incoming.tag, requeue=requeue, wait=False), "nack")

    async def republish(self, incoming: Incoming, out: Outgoing) -> None:
        """Publish a copy (confirmed), then ack the original: delayed requeue, dead letter."""
        await self.publish_all([out])
        await self.ack(incoming)

    async def peek_dead(self, limit: int) -> list[tuple[bytes, dict[str, str]]]:
        name = await self.ensure_dead()
        await self.ready(OUTAGE_S)
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            got: list[aiormq.abc.DeliveredMessage] = []
            while len(got) < limit:
                message = await channel.basic_get(name, no_ack=False)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                got.append(message)
            if got:  # give them all back, in place
                last = got[-1].delivery
                assert isinstance(last, spec.Basic.GetOk)
                await channel.basic_nack(last.delivery_tag or 0, multiple=True, requeue=True)
            return [(m.body, str_headers(m.header.properties.headers)) for m in got]
        finally:
            await _quietly(channel.close())

    async def delete_topology(self) -> None:
        channel = await self.channel()
        for name in sorted({*self._declared, f"{self.namespace}.dead"}):
            try:
                await channel.queue_delete(name)
            except aiormq.exceptions.ChannelNotFoundEntity:
                channel = await self.channel()
        await channel.exchange_delete(self.namespace)
        self._declared.clear()


async def _settle(action: Awaitable[None], what: str) -> None:
    """Await an ack/nack; on a dead channel (or a second settle) log and move on."""
    try:
        await action
    except (*CONNECTION_ERRORS, *DRIVER_ERRORS) as exc:
        logger.debug("%s ignored (channel gone or already settled): %r", what, exc)


async def _quietly(action: Awaitable[Any]) -> None:
    try:
        await action
    except BaseException as exc:  # closing anyway
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        logger.debug("ignored while closing: %r", exc)
