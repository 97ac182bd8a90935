"""PgQueuer app for the benchmark: entrypoint ``noop`` over asyncpg (its fastest driver).

Run by ``pgq run peers.pgqueuer_app:main`` (the ``pgqueuer`` CLI; batch size and limits are
its flags). Isolation: ``PGQUEUER_SCHEMA`` holds the tables of this case, ``PGQUEUER_CHANNEL``
names its NOTIFY channel (channels are database-wide, schemas do not separate them). The
payload is JSON ``{"i": ..., "sent": ...}``, as the other systems' arguments are.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from benchlib.record import record
from pgqueuer import PgQueuer
from pgqueuer.models import Job

DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
ENTRYPOINT = "noop"


def payload(i: int, sent: float) -> bytes:
    return json.dumps({"i": i, "sent": sent}).encode()


@asynccontextmanager
async def main() -> AsyncIterator[PgQueuer]:
    # One direct connection for the QueueManager, as PgQueuer's performance guide advises.
    connection = await asyncpg.connect(DSN)
    pgq = PgQueuer.from_asyncpg_connection(connection)

    @pgq.entrypoint(ENTRYPOINT)
    async def noop(job: Job) -> None:
        record(json.loads(job.payload or b"{}").get("sent", 0.0))

    try:
        yield pgq
    finally:
        await connection.close()
