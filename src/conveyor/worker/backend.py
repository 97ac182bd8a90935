"""What the worker's event loop needs from a deployment: each *cycle* records the outcomes that
finished and claims the deliveries that arrived, in one transaction; plus acks, leases and
publishing.

``Backend`` is that interface. ``SplitBackend`` builds it from an *intake* (the broker side:
``AmqpIntake`` on the loop for RabbitMQ, ``PortIntake`` for any other ``Broker``) and a *ledger*
(the store side: ``PostgresLedger`` on the loop for PostgreSQL, one statement per cycle;
``PortLedger`` for any other ``Store``). The embedded default has its own (``SqliteBackend``):
broker and store share one SQLite file, so a cycle's leases, claims, outcomes and acks commit in
one transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from conveyor import message
from conveyor.errors import ConveyorError, SerializationError
from conveyor.flow.hooks import FlowHooks
from conveyor.flow.limits import Held
from conveyor.flow.routing import NODE_QUEUE_PREFIX
from conveyor.message import Message
from conveyor.model import Task, TaskStatus
from conveyor.store.base import Outcome, Store

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Arrival:
    """One delivery on the worker's hot path; ``handle`` is the intake's own object."""

    body: bytes
    queue: str
    redelivered: bool
    handle: Any
    settled: bool = False


@dataclass(eq=False, slots=True)
class Claimed:
    """A delivery after the batch claim: ``task`` is set when the fast path started it;
    ``error`` when the body is not a valid task message."""

    arrival: Arrival
    message: Message | None = None
    task: Task | None = None
    error: str | None = None
    hold: Held | None = None  # flow control held the task back (docs/flow-control.md): it waits, without a slot
    hold_s: float | None = None  # ... its delivery goes back to the broker for this long (None: parked, ack it)


@dataclass(eq=False, slots=True)
class Finished:
    """An attempt's outcome to record, with the task as the worker knows it and its delivery."""

    arrival: Arrival
    outcome: Outcome
    task: Task
    ack: bool = True  # False: a task given back (its delivery is requeued instead)


def decode(arrival: Arrival) -> Claimed:
    """Decode a body; the queue it came from wins over the one it names (a message claiming
    another queue would have its retries sent where nobody consumes)."""
    try:
        msg = message.decode(arrival.body)
    except SerializationError as exc:
        return Claimed(arrival, error=f"malformed message: {exc}")
    if msg.queue != arrival.queue and not arrival.queue.startswith(NODE_QUEUE_PREFIX):  # a node's own queue
        log.info("task %s names queue %r but came from %r: the delivery's queue wins", msg.id, msg.queue,
                 arrival.queue, extra={"task_id": str(msg.id), "queue": arrival.queue})
        msg = dataclasses.replace(msg, queue=arrival.queue)
    return Claimed(arrival, msg)


def started_task(msg: Message, node: str, version: int) -> Task:
    """The task a claim started, as the worker needs it: all of it came with the message."""
    return Task(type=msg.type, params=msg.params, id=msg.id, queue=msg.queue, priority=msg.priority,
                status=TaskStatus.RUNNING, attempts=msg.attempt, max_attempts=msg.max_attempts, timeout=msg.timeout,
                eta=msg.eta, node=node, version=version, flow=msg.flow)


class Backend(Protocol):
    store: Store  # the synchronous store, for the rare paths (run in a thread)
    lease_based: bool  # deliveries are held by a renewable lease (else: acked early when long)
    flow: FlowHooks | None  # flow control (docs/flow-control.md); open_backend always sets it

    async def start(self, queues: Sequence[str], concurrency: int, prefetch: int) -> None: ...

    async def wait(self, timeout_s: float) -> None:
        """Return when deliveries may be waiting (or after ``timeout_s``)."""
        ...

    async def cycle(self, finished: Sequence[Finished], take: int, node: str,
                    lease_s: float) -> tuple[list[Task | None], list[Claimed]]:
        """Record the outcomes (durable on return) and ack the deliveries of those written;
        take up to ``take`` deliveries and claim them; see to retries' messages. Returns the
        tasks as written (None where the fence held an outcome off: its delivery is left for
        the caller) and the deliveries taken (``task`` set on those claimed)."""
        ...

    async def ack(self, arrivals: Sequence[Arrival]) -> None: ...

    async def requeue(self, arrival: Arrival, delay_s: float) -> None: ...

    def retake(self, arrival: Arrival) -> None:
        """Put a delivery this node held back (flow control: a wait of under a second for a
        rate limit) in front of those the next cycle takes."""
        ...

    async def dead_letter(self, arrival: Arrival, reason: str) -> None: ...

    async def renew(self, leases: Sequence[tuple[uuid.UUID, int]], arrivals: Sequence[Arrival], node: str,
                    lease_s: float) -> set[uuid.UUID]:
        """Renew the store leases (and, where lease-based, the deliveries); the ids renewed."""
        ...

    async def publish(self, tasks: Sequence[Task]) -> None:
        """Publish the tasks' messages (confirmed) and remove their outbox intents."""
        ...

    async def stop_taking(self) -> None:
        """Stop receiving; deliveries received but not taken go back to their queue."""
        ...

    async def close(self) -> None: ...


class StoreThread:
    """The synchronous store, called from the loop one call at a time on one thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="conveyor-store")

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class Intake(Protocol):
    lease_based: bool

    async def start(self, queues: Sequence[str], concurrency: int, prefetch: int) -> None: ...

    async def wait(self, timeout_s: float) -> None: ...

    async def take(self, max_n: int) -> list[Arrival]:
        """Up to ``max_n`` deliveries received so far (never waits long)."""
        ...

    def untake(self, arrivals: Sequence[Arrival]) -> None:
        """Put taken deliveries back in front (their cycle failed)."""
        ...

    async def ack(self, arrivals: Sequence[Arrival]) -> None: ...

    async def requeue(self, arrival: Arrival, delay_s: float) -> None: ...

    async def dead_letter(self, arrival: Arrival, reason: str) -> None: ...

    async def renew(self, arrivals: Sequence[Arrival], lease_s: float) -> None: ...

    async def publish(self, tasks: Sequence[Task], now: float) -> None: ...

    async def stop_taking(self) -> None: ...

    async def close(self) -> None: ...


class Ledger(Protocol):
    async def cycle(self, finished: Sequence[Finished], claims: Sequence[Message], node: str,
                    lease_s: float) -> tuple[list[Task | None], list[Task | None]]:
        """Write the outcomes (fenced, durable) and claim the messages' attempts, together;
        the tasks written and the tasks started, None where nothing was."""
        ...

    async def renew(self, leases: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> set[uuid.UUID]: ...

    async def close(self) -> None: ...


class PortLedger:
    """Any ``Store``, through its synchronous batch methods on a store thread."""

    def __init__(self, store: Store) -> None:
        self._thread = StoreThread(store)
        self._store = store

    async def cycle(self, finished: Sequence[Finished], claims: Sequence[Message], node: str,
                    lease_s: float) -> tuple[list[Task | None], list[Task | None]]:
        store = self._store

        def both() -> tuple[list[Task | None], list[Task | None]]:
            written = store.finish_many([f.outcome for f in finished], node) if finished else []
            started = store.claim_many([(m.id, m.attempt) for m in claims], node, lease_s) if claims else []
            return written, started

        result: tuple[list[Task | None], list[Task | None]] = await self._thread.call(both)
        return result

    async def renew(self, leases: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> set[uuid.UUID]:
        result: set[uuid.UUID] = await self._thread.call(self._store.renew_leases, leases, node, lease_s)
        return result

    async def close(self) -> None:
        self._thread.close()


class SplitBackend:
    """A backend from an intake and a ledger (see the module docstring)."""

    def __init__(self, intake: Intake, ledger: Ledger, store: Store, flow: FlowHooks | None = None) -> None:
        self.intake = intake
        self.ledger = ledger
        self.store = store
        self.flow = flow
        self.lease_based = intake.lease_based
        self._store_thread = StoreThread(store)
        self._background: set[asyncio.Task[None]] = set()

    async def start(self, queues: Sequence[str], concurrency: int, prefetch: int) -> None:
        await self.intake.start(queues, concurrency, prefetch)

    async def wait(self, timeout_s: float) -> None:
        await self.intake.wait(timeout_s)

    async def cycle(self, finished: Sequence[Finished], take: int, node: str,
                    lease_s: float) -> tuple[list[Task | None], list[Claimed]]:
        arrivals = await self.intake.take(take) if take > 0 else []
        claimed = [decode(a) for a in arrivals]
        finishing = {f.outcome.task_id for f in finished}
        # A copy of a task being finished in this very cycle waits for the next (one row, one write).
        valid = [c for c in claimed if c.message is not None and c.message.id not in finishing]
        released: list[Task] = []
        try:
            if self.flow is not None and self.flow.involved(finished, valid):  # one transaction of its own
                written, started, released = await self._store_thread.call(self.flow.cycle, self.store, finished,
                                                                           valid, node, lease_s)
            else:
                written, started = await self.ledger.cycle(finished, [c.message for c in valid if c.message], node,
                                                           lease_s)
        except BaseException:
            self.intake.untake(arrivals)
            raise
        for c, task in zip(valid, started, strict=True):
            c.task = task
        await self.intake.ack([f.arrival for f, w in zip(finished, written, strict=True) if w is not None and f.ack])
        retries = [w for w in written if w is not None and w.status is TaskStatus.RETRYING]
        if retries or released:
            self._spawn(self.publish(retries + released))
        return written, claimed

    async def ack(self, arrivals: Sequence[Arrival]) -> None:
        await self.intake.ack(arrivals)

    async def requeue(self, arrival: Arrival, delay_s: float) -> None:
        await self.intake.requeue(arrival, delay_s)

    def retake(self, arrival: Arrival) -> None:
        self.intake.untake([arrival])

    async def dead_letter(self, arrival: Arrival, reason: str) -> None:
        await self.intake.dead_letter(arrival, reason)

    async def renew(self, leases: Sequence[tuple[uuid.UUID, int]], arrivals: Sequence[Arrival], node: str,
                    lease_s: float) -> set[uuid.UUID]:
        owned = await self.ledger.renew(leases, node, lease_s)
        if self.lease_based:
            await self.intake.renew(arrivals, lease_s)
        return owned

    async def publish(self, tasks: Sequence[Task]) -> None:
        try:
            now: float = await self._store_thread.call(self.store.now)
            await self.intake.publish(tasks, now)
            await self._store_thread.call(self.store.mark_published, tasks)
        except ConveyorError as exc:  # the outbox intents stay: the reconciler publishes them
            log.warning("could not publish %d retry message(s): %s", len(tasks), exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop_taking(self) -> None:
        await self.intake.stop_taking()

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=10)
        await self.ledger.close()
        await self.intake.close()
        self._store_thread.close()
