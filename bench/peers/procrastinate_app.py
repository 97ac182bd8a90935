"""Procrastinate app for the benchmark: task ``bench.noop`` on queue ``$BENCH_QUEUE``.

Its tables live in schema ``$BENCH_PG_SCHEMA`` (the connection's ``search_path``, the way
Procrastinate's docs place it in another schema). ``BENCH_PG_POOL`` sizes the psycopg pool
(worker: concurrency + 2; clients with many in flight: more).
"""

from __future__ import annotations

import os

import procrastinate
from benchlib.record import record

SCHEMA = os.environ.get("BENCH_PG_SCHEMA", "public")
POOL = int(os.environ.get("BENCH_PG_POOL", "10"))
DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")

app = procrastinate.App(connector=procrastinate.PsycopgConnector(
    conninfo=f"{DSN}?options=-csearch_path%3D{SCHEMA}", min_size=POOL, max_size=POOL))


@app.task(name="bench.noop", queue=os.environ.get("BENCH_QUEUE", "bench"))
async def noop(i: int = 0, sent: float = 0.0) -> None:
    record(sent)
