"""The PostgreSQL side of the worker's hot path, on the worker's event loop (asyncpg).

Each cycle is ONE statement (``postgres_batch.cycle_sql``): the outcomes that finished since the
last cycle are written (fenced, with their events and the retries' outbox intents) and the
deliveries that arrived are claimed, in one transaction, durable before the outcomes' deliveries
are acked. It returns only keys (id, status, version, eta): the worker has the rest of each task
from its message. Lease renewals (every ``lease_s / 3``) share the pool. A failed statement
raises ``StoreError`` and the caller retries; the pool replaces broken connections.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from conveyor.message import Message
from conveyor.model import Task, TaskStatus
from conveyor.store import postgres_batch as batch
from conveyor.store.postgres_async import AsyncPostgres
from conveyor.worker.backend import Finished, started_task

_STATUSES = {s.value: s for s in TaskStatus}


class PostgresLedger:
    def __init__(self, db: AsyncPostgres) -> None:
        self.db = db

    async def cycle(self, finished: Sequence[Finished], claims: Sequence[Message], node: str,
                    lease_s: float) -> tuple[list[Task | None], list[Task | None]]:
        if not finished and not claims:
            return [], []
        keep_f = batch.first_of_each_id([f.outcome.task_id for f in finished])
        keep_c = batch.first_of_each_id([m.id for m in claims])
        rows = await self.db.cycle([finished[k].outcome for k in keep_f],
                                   [(claims[k].id, claims[k].attempt) for k in keep_c], node, lease_s)
        done = {row[1]: row for row in rows if row[0] == "f"}
        started = {row[1]: row for row in rows if row[0] == "c"}
        written: list[Task | None] = []
        for f in finished:
            row = done.pop(f.outcome.task_id, None)
            written.append(None if row is None else f.task.replace(
                status=_STATUSES[row[2]], version=row[3], eta=row[4], lease_until=None))
        tasks: list[Task | None] = []
        for m in claims:
            row = started.pop(m.id, None)
            tasks.append(None if row is None else started_task(m, node, row[3]))
        return written, tasks

    async def renew(self, leases: Sequence[tuple[uuid.UUID, int]], node: str, lease_s: float) -> set[uuid.UUID]:
        return await self.db.renew(leases, node, lease_s)

    async def close(self) -> None:
        await self.db.close()
