"""The embedded worker's hot path: broker and store in one SQLite file, so each batch is one
transaction: leasing the messages and claiming their tasks together, and writing the outcomes,
the retries' next messages and the acks (row deletes) together. No outbox is needed, and no
delivery can be acked without its outcome or stored without its message.

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
import time
import uuid
from collections.abc import Sequence

from conveyor.broker import sqlite as broker_sql
from conveyor.embedded import SqliteTogether
from conveyor.model import Task, TaskStatus
from conveyor.publisher import publish_item
from conveyor.store.base import Outcome
from conveyor.worker.backend import Arrival, Claimed, StoreThread, decode

_MIN_PAUSE_S = 0.002
_MAX_PAUSE_S = 0.1


class SqliteBackend:
    lease_based = True

    def __init__(self, together: SqliteTogether, *, lease_s: float) -> None:
        self.store = together.store
        self._broker = together.broker
        self._lease_s = lease_s
        self._owner = uuid.uuid4().hex
        self._queues: tuple[str, ...] = ()
        self._thread = StoreThread(self.store)
        self._buffer: collections.deque[broker_sql.Leased] = collections.deque()
        self._extra = 0

    async def start(self, queues: Sequence[str], concurrency: int, prefetch: int) -> None:
        self._queues = tuple(queues)
        self._extra = prefetch
        for queue in queues:
            await self._thread.call(self._broker.declare_queue, queue)

    async def take(self, max_n: int, timeout_s: float, node: str, lease_s: float) -> list[Claimed]:
        deadline = time.monotonic() + timeout_s
        pause = _MIN_PAUSE_S
        while True:
            claimed: list[Claimed] = await self._thread.call(self._take_now, max_n, node, lease_s)
            if claimed or time.monotonic() >= deadline:
                return claimed
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, _MAX_PAUSE_S)

    def _take_now(self, max_n: int, node: str, lease_s: float) -> list[Claimed]:
        room = max_n + self._extra - len(self._buffer)
        if len(self._buffer) < max_n or room > 0:
            with self.store.locked() as conn:
                ready = broker_sql.has_ready_in(conn, self._queues)
            if not ready and not self._buffer:
                return []
        else:
            ready = False
        with self.store.transaction() as conn:
            if ready and room > 0:
                self._buffer.extend(broker_sql.lease_in(conn, self._owner, self._queues, room, self._lease_s))
            leased = [self._buffer.popleft() for _ in range(min(max_n, len(self._buffer)))]
            claimed = [decode(Arrival(m.body, m.queue, m.redelivered, m)) for m in leased]
            valid = [c for c in claimed if c.message is not None]
            started = self.store.claim_in(conn, [(c.message.id, c.message.attempt) for c in valid  # type: ignore[union-attr]
                                                 ], node, lease_s)
            for c, task in zip(valid, started, strict=True):
                c.task = task
        return claimed

    async def record(self, items: Sequence[tuple[Arrival, Outcome]], node: str, *,
                     ack: bool = True) -> list[Task | None]:
        result: list[Task | None] = await self._thread.call(self._record_now, items, node, ack)
        return result

    def _record_now(self, items: Sequence[tuple[Arrival, Outcome]], node: str, ack: bool) -> list[Task | None]:
        outcomes = [dataclasses.replace(o, publish=False) for _, o in items]  # messages go in this transaction
        with self.store.transaction() as conn:
            written: list[Task | None] = self.store.finish_in(conn, outcomes, node)
            now = time.time()
            retries = [publish_item(w, now) for w in written if w is not None and w.status is TaskStatus.RETRYING]
            if retries:
                self._broker.insert_in(conn, retries)
            done = [a for (a, _), w in zip(items, written, strict=True) if ack and w is not None and not a.settled]
            broker_sql.delete_in(conn, [a.handle.seq for a in done], self._owner)
        for arrival in done:
            arrival.settled = True
        return written

    async def ack(self, arrivals: Sequence[Arrival]) -> None:
        pending = [a for a in arrivals if not a.settled]
        if pending:
            await self._thread.call(self._ack_now, pending)

    def _ack_now(self, arrivals: Sequence[Arrival]) -> None:
        with self.store.locked() as conn:
            broker_sql.delete_in(conn, [a.handle.seq for a in arrivals], self._owner)
        for arrival in arrivals:
            arrival.settled = True

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
