"""Peers' benchmark client: ``python -m peers.client SYSTEM MODE --n N [...]``.

SYSTEM: celery, dramatiq, huey (called from threads) or pgqueuer, procrastinate (asyncio).
MODE:
  submit   one at a time, each durable on return (Celery/Dramatiq confirmed unless
           BENCH_CONFIRM=0; PgQueuer/Procrastinate one committed INSERT per call)
  threads  ``--threads`` threads submitting at once (Celery, Dramatiq, Huey)
  async    ``--in-flight`` coroutines enqueueing at once (PgQueuer, Procrastinate)
  paced    steady rate, ``sent`` in the arguments; this process's shard of a schedule
           shared by ``--of`` processes
  fill     queue N tasks as fast as the system allows (drain set-up, not a result)
One warm-up task is sent before the timing starts. Prints one JSON line with the timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from benchlib.pace import emit, in_flight_async, in_flight_threads, paced, paced_async, shard, timed, timed_async

SYNC = ("celery", "dramatiq", "huey")
ASYNC = ("pgqueuer", "procrastinate")
FILL_BATCH = 1000

Send = Callable[[int, float], None]
SendAsync = Callable[[int, float], Awaitable[None]]
SendMany = Callable[[range], Awaitable[None]]


def sender(system: str) -> Send:
    if system == "celery":
        from peers.celery_app import noop as celery_noop

        return lambda i, sent: celery_noop.apply_async((i, sent))
    if system == "dramatiq":
        from peers.dramatiq_app import noop as dramatiq_noop

        def send(i: int, sent: float) -> None:
            dramatiq_noop.send(i, sent)

        return send
    if system == "huey":
        from peers.huey_app import noop as huey_noop

        return lambda i, sent: huey_noop(i, sent)
    raise SystemExit(f"unknown system {system!r}")


@asynccontextmanager
async def async_sender(system: str, pool: int) -> AsyncIterator[tuple[SendAsync, SendMany]]:
    """(one enqueue, a batch enqueue) over ``pool`` connections (1: a single connection)."""
    if system == "pgqueuer":
        import asyncpg
        from pgqueuer.db import AsyncpgDriver, AsyncpgPoolDriver
        from pgqueuer.queries import Queries

        from peers.pgqueuer_app import DSN, ENTRYPOINT, payload

        if pool == 1:
            connection = await asyncpg.connect(DSN)
            queries = Queries(AsyncpgDriver(connection))
            close: Callable[[], Awaitable[Any]] = connection.close
        else:
            connections = await asyncpg.create_pool(DSN, min_size=pool, max_size=pool)
            queries = Queries(AsyncpgPoolDriver(connections))
            close = connections.close

        async def one_pgq(i: int, sent: float) -> None:
            await queries.enqueue(ENTRYPOINT, payload(i, sent))

        async def many_pgq(indices: range) -> None:
            await queries.enqueue([ENTRYPOINT] * len(indices), [payload(i, 0.0) for i in indices],
                                  [0] * len(indices))

        try:
            yield one_pgq, many_pgq
        finally:
            await close()
    elif system == "procrastinate":
        os.environ["BENCH_PG_POOL"] = str(pool)
        from peers.procrastinate_app import app, noop

        async def one_pro(i: int, sent: float) -> None:
            await noop.defer_async(i=i, sent=sent)

        async def many_pro(indices: range) -> None:
            payloads: list[dict[str, Any]] = [{"i": i, "sent": 0.0} for i in indices]
            await noop.batch_defer_async(*payloads)

        async with app.open_async():
            yield one_pro, many_pro
    else:
        raise SystemExit(f"unknown system {system!r}")


def run_sync(args: argparse.Namespace) -> dict[str, Any]:
    send = sender(args.system)
    if args.mode == "threads":
        return in_flight_threads(lambda i: send(i, 0.0), n=args.n, threads=args.threads, max_s=args.max_s)
    send(-1, 0.0)  # connect and declare outside the timing
    if args.mode in ("submit", "fill"):
        def step(low: int) -> int:
            high: int = min(args.n, low + 100)  # check the clock every 100 sends
            for i in range(low, high):
                send(i, 0.0)
            return high - low
        return timed(step, args.n, args.max_s)
    if args.mode == "paced":
        return paced(send, rate=args.rate, indices=shard(args.n, args.shard, args.of), threads=args.threads,
                     start_at=args.start_at)
    raise SystemExit(f"{args.system} has no mode {args.mode!r}")


async def run_async(args: argparse.Namespace) -> dict[str, Any]:
    pool = 1 if args.mode in ("submit", "fill") else args.pool
    async with async_sender(args.system, pool) as (one, many):
        if args.mode == "async":
            return await in_flight_async(lambda i: one(i, 0.0), n=args.n, in_flight=args.in_flight,
                                         max_s=args.max_s)
        await one(-1, 0.0)
        if args.mode == "submit":
            async def single(i: int) -> int:
                await one(i, 0.0)
                return 1
            return await timed_async(single, args.n, args.max_s)
        if args.mode == "fill":
            async def batch(low: int) -> int:
                high: int = min(args.n, low + FILL_BATCH)
                await many(range(low, high))
                return high - low
            return await timed_async(batch, args.n, args.max_s)
        if args.mode == "paced":
            return await paced_async(one, rate=args.rate, indices=shard(args.n, args.shard, args.of),
                                     start_at=args.start_at)
    raise SystemExit(f"{args.system} has no mode {args.mode!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=[*SYNC, *ASYNC])
    parser.add_argument("mode", choices=["submit", "threads", "async", "paced", "fill"])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--pool", type=int, default=16, help="PostgreSQL connections of an async client")
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--of", type=int, default=1)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--max-s", type=float, default=30.0, help="stop submitting after this long")
    args = parser.parse_args()
    if args.system in SYNC:
        emit(run_sync(args))
    else:
        emit(asyncio.run(run_async(args)))


if __name__ == "__main__":
    main()
