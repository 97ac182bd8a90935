"""Conveyor's benchmark client: ``python -m conveyor_bench.client MODE --n N [...]``.

Modes: ``submit`` (TaskService.submit, one at a time: stored, then a confirmed publish),
``submit-many`` (TaskService.submit_many in batches), ``threads`` (TaskService.submit from
``--threads`` threads, each call durable on return), ``async`` (``await app.submit_async``
from ``--in-flight`` coroutines, when the installed Conveyor has it), ``paced`` (steady
rate, ``sent`` in the params; this process's shard of a schedule shared by ``--of``
processes). Prints one JSON line with the timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from benchlib.pace import emit, in_flight_async, in_flight_threads, paced, shard, timed

from conveyor import Conveyor
from conveyor.service import SubmitRequest

TYPE = "bench.noop"


def has_submit_async() -> bool:
    return hasattr(Conveyor, "submit_async")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["submit", "submit-many", "threads", "async", "paced"])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--shard", type=int, default=0, help="paced: this client's index among --of")
    parser.add_argument("--of", type=int, default=1, help="paced: client processes sharing the schedule")
    parser.add_argument("--start-at", type=float, default=0.0, help="paced: wall time of submit 0")
    parser.add_argument("--max-s", type=float, default=30.0, help="stop submitting after this long")
    args = parser.parse_args()
    queue = os.environ.get("BENCH_QUEUE", "bench")
    app = Conveyor()
    service = app.service

    def one(i: int, sent: float = 0.0) -> None:
        service.submit(SubmitRequest(type=TYPE, params={"i": i, "sent": sent}, queue=queue))

    one(-1)  # connect and declare outside the timing; the record of it is discarded

    def single(i: int) -> int:
        one(i)
        return 1

    def batch(low: int) -> int:
        high: int = min(args.n, low + args.batch)
        service.submit_many([SubmitRequest(type=TYPE, params={"i": i, "sent": 0.0}, queue=queue)
                             for i in range(low, high)])
        return high - low

    result: dict[str, Any]
    if args.mode in ("submit", "submit-many"):
        result = timed(single if args.mode == "submit" else batch, args.n, args.max_s)
    elif args.mode == "threads":
        result = in_flight_threads(one, n=args.n, threads=args.threads, max_s=args.max_s)
    elif args.mode == "async":
        result = asyncio.run(submit_async(app, queue, args.n, args.in_flight, args.max_s))
    else:
        result = paced(one, rate=args.rate, indices=shard(args.n, args.shard, args.of), threads=args.threads,
                       start_at=args.start_at)
    app.close()
    emit(result)


async def submit_async(app: Conveyor, queue: str, n: int, in_flight: int, max_s: float) -> dict[str, float]:
    submit = getattr(app, "submit_async", None)
    if submit is None:
        raise SystemExit("this Conveyor has no submit_async")

    async def one(i: int) -> None:
        await submit(TYPE, {"i": i, "sent": 0.0}, queue=queue)

    return await in_flight_async(one, n=n, in_flight=in_flight, max_s=max_s)


if __name__ == "__main__":
    main()
