"""The embedded worker's hot path: broker and store in one SQLite file, so each cycle is one
transaction: writing the outcomes, the retries' next messages and the acks (row deletes), and
leasing the next messages and claiming their tasks. No outbox is needed, and no delivery can be
acked without its outcome or stored without its message.

The file is shared by the processes of one machine; SQLite lets one writer in at a time, so a
transaction here is kept to a few milliseconds (a batch is at most the free slots). Beyond the
free slots a worker leases at most ``prefetch`` messages more (bounded prefetch: fair dispatch
between processes); those wait unclaimed in a local buffer, their broker leases renewed, and
go back to the queue when the worker stops. Idle polling backs off from 2 ms to 100 ms and
first looks without taking the write lock.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import sqlite3
import time
import uuid
from collections.abc import Sequence

from conveyor.broker import sqlite as broker_sql
from conveyor.embedded import SqliteTogether
from conveyor.flow.hooks import FlowHooks
from conveyor.flow.routing import NODE_QUEUE_PREFIX
from conveyor.model import Task, TaskStatus
from conveyor.publisher import publish_item
from conveyor.store.sqlite_flow import SqliteFlowTx
from conveyor.worker.backend import Arrival, Claimed, Finished, StoreThread, decode

_MIN_PAUSE_S = 0.002
OWN_LOOK_S = 0.1  # how often the node's own queue (routing: docs/flow-control.md) is looked at
_MAX_PAUSE_S = 0.1


class SqliteBackend:
    lease_based = True

    def __init__(self, together: SqliteTogether, *, lease_s: float, flow: FlowHooks | None = None) -> None:
        self.store = together.store
        self.flow = flow
        self._broker = together.broker
        self._lease_s = lease_s
        self._owner = uuid.uuid4().hex
        self._queues: tuple[str, ...] = ()
        self._own_queues: tuple[str, ...] = ()  # the node's own queue (routing), looked at now and then
        self._next_own_look = 0.0
        self._thread = StoreThread(self.store)
        self._buffer: collections.deque[broker_sql.Leased] = collections.deque()
        self._extra = 0
        self._pause = _MIN_PAUSE_S

    async def start(self, queues: Sequence[str], concurrency: int, prefetch: int) -> None:
        self._queues = tuple(q for q in queues if not q.startswith(NODE_QUEUE_PREFIX))
        self._own_queues = tuple(q for q in queues if q.startswith(NODE_QUEUE_PREFIX))
        self._extra = prefetch
        for queue in queues:
            await self._thread.call(self._broker.declare_queue, queue)

    async def wait(self, timeout_s: float) -> None:
        """Poll: look (without the write lock) until something is ready, backing off."""
        deadline = time.monotonic() + timeout_s
        while not self._buffer:
            ready: bool = await self._thread.call(self._has_ready)
            if ready or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(self._pause, max(0.0, deadline - time.monotonic())))
            self._pause = min(self._pause * 2, _MAX_PAUSE_S)
        self._pause = _MIN_PAUSE_S

    def _has_ready(self) -> bool:
        with self.store.locked() as conn:
            return broker_sql.has_ready_in(conn, self._queues)

    async def cycle(self, finished: Sequence[Finished], take: int, node: str,
                    lease_s: float) -> tuple[list[Task | None], list[Claimed]]:
        result: tuple[list[Task | None], list[Claimed]] = await self._thread.call(
            self._cycle_now, finished, take, node, lease_s)
        return result

    def _cycle_now(self, finished: Sequence[Finished], take: int, node: str,
                   lease_s: float) -> tuple[list[Task | None], list[Claimed]]:
        buffered = list(self._buffer)
        try:
            with self.store.transaction() as conn:
                written = self._record_in(conn, finished, node)
                claimed = self._take_in(conn, take, node, lease_s, {f.outcome.task_id for f in finished})
        except BaseException:
            self._buffer = collections.deque(buffered)  # the leases were rolled back with the rest
            raise
        for f, task in zip(finished, written, strict=True):
            if task is not None and f.ack:
                f.arrival.settled = True
        return written, claimed

    def _record_in(self, conn: sqlite3.Connection, finished: Sequence[Finished], node: str) -> list[Task | None]:
        if not finished:
            return []
        outcomes = [dataclasses.replace(f.outcome, publish=False) for f in finished]  # messages go in here
        if self.flow is not None and self.flow.involved(finished, ()):  # flow control: tracked outcomes
            written, released = self.flow.finish(SqliteFlowTx(self.store, conn), finished, outcomes, node)
            self._publish_in(conn, released)
        else:
            written = self.store.finish_in(conn, outcomes, node)
        now = time.time()
        retries = [publish_item(w, now) for w in written if w is not None and w.status is TaskStatus.RETRYING]
        if retries:
            self._broker.insert_in(conn, retries)
        done = [f.arrival.handle.seq for f, w in zip(finished, written, strict=True)
                if f.ack and w is not None and not f.arrival.settled]
        broker_sql.delete_in(conn, done, self._owner)
        return written

    def _take_in(self, conn: sqlite3.Connection, take: int, node: str, lease_s: float,
                 finishing: set[uuid.UUID]) -> list[Claimed]:
        if take <= 0:
            return []
        room = take + self._extra - len(self._buffer)
        if room > 0:
            self._buffer.extend(broker_sql.lease_in(conn, self._owner, self._queues, room, self._lease_s))
            if self._own_queues and time.monotonic() >= self._next_own_look and len(self._buffer) < take + self._extra:
                # Apart from the queues' lease, and at most every OWN_LOOK_S: a lease over two
                # queues could not read the index in order (it would sort the whole backlog).
                self._next_own_look = time.monotonic() + OWN_LOOK_S
                self._buffer.extend(broker_sql.lease_in(conn, self._owner, self._own_queues,
                                                        take + self._extra - len(self._buffer), self._lease_s))
        leased = [self._buffer.popleft() for _ in range(min(take, len(self._buffer)))]
        claimed = [decode(Arrival(m.body, m.queue, m.redelivered, m)) for m in leased]
        valid = [c for c in claimed if c.message is not None and c.message.id not in finishing]
        if self.flow is not None and self.flow.involved((), valid):  # flow control: limited task types
            started, taken_over = self.flow.claim(SqliteFlowTx(self.store, conn), valid, node, lease_s)
            self._publish_in(conn, taken_over)
        else:
            started = self.store.claim_in(conn, [(c.message.id, c.message.attempt)  # type: ignore[union-attr]
                                                 for c in valid], node, lease_s)
        for c, task in zip(valid, started, strict=True):
            c.task = task
        return claimed

    async def ack(self, arrivals: Sequence[Arrival]) -> None:
        pending = [a for a in arrivals if not a.settled]
        if pending:
            await self._thread.call(self._ack_now, pending)

    def _ack_now(self, arrivals: Sequence[Arrival]) -> None:
        with self.store.locked() as conn:
            broker_sql.delete_in(conn, [a.handle.seq for a in arrivals], self._owner)
        for arrival in arrivals:
            arrival.settled = True

    def retake(self, arrival: Arrival) -> None:
        self._buffer.appendleft(arrival.handle)

    async def requeue(self, arrival: Arrival, delay_s: float) -> None:
        if not arrival.settled:
            arrival.settled = True
            await self._thread.call(self._locked, broker_sql.requeue_in, arrival.handle.seq, self._owner, delay_s)

    async def dead_letter(self, arrival: Arrival, reason: str) -> None:
        if not arrival.settled:
            arrival.settled = True
            await self._thread.call(self._in_transaction, broker_sql.dead_letter_in, arrival.handle, self._owner,
                                    reason)

    def _locked(self, fn: object, *args: object) -> object:
        with self.store.locked() as conn:
            return fn(conn, *args)  # type: ignore[operator]

    def _in_transaction(self, fn: object, *args: object) -> object:
        with self.store.transaction() as conn:
            return fn(conn, *args)  # type: ignore[operator]

    async def renew(self, leases: Sequence[tuple[uuid.UUID, int]], arrivals: Sequence[Arrival], node: str,
                    lease_s: float) -> set[uuid.UUID]:
        owned: set[uuid.UUID] = await self._thread.call(self.store.renew_leases, leases, node, lease_s)
        held = [a.handle.seq for a in arrivals if not a.settled]
        await self._thread.call(self._renew_messages, held, lease_s)
        return owned

    def _renew_messages(self, held: list[int], lease_s: float) -> None:  # on the store thread
        seqs = held + [m.seq for m in self._buffer]
        if seqs:
            with self.store.locked() as conn:
                broker_sql.renew_in(conn, seqs, self._owner, lease_s)

    async def publish(self, tasks: Sequence[Task]) -> None:
        await self._thread.call(self._publish_now, tasks)

    def _publish_now(self, tasks: Sequence[Task]) -> None:
        with self.store.transaction() as conn:
            self._publish_in(conn, tasks)

    def _publish_in(self, conn: sqlite3.Connection, tasks: Sequence[Task]) -> None:
        """The tasks' messages, in the caller's transaction: their outbox intents are fulfilled."""
        if tasks:
            now = time.time()
            self._broker.insert_in(conn, [publish_item(t, now) for t in tasks])
            conn.executemany("DELETE FROM task_outbox WHERE task_id = ? AND version <= ?",
                             [(str(t.id), t.version) for t in tasks])

    async def stop_taking(self) -> None:
        """Give the buffered (leased, never claimed) messages back at once."""
        await self._thread.call(self._release_buffer)

    def _release_buffer(self) -> None:  # on the store thread
        seqs = [m.seq for m in self._buffer]
        self._buffer.clear()
        if seqs:
            self._broker._release(seqs, self._owner)

    async def close(self) -> None:
        self._thread.close()
