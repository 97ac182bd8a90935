"""Conveyor's benchmark client: ``python -m conveyor_bench.client MODE --n N [...]``.

Modes: ``submit`` (TaskService.submit, one at a time: stored, then a confirmed publish),
``submit-many`` (TaskService.submit_many in batches), ``paced`` (steady rate, ``sent`` in the
params). Prints one JSON line with the timing.
"""

from __future__ import annotations

import argparse
import os

from benchlib.pace import emit, paced, timed

from conveyor import Conveyor
from conveyor.service import SubmitRequest

TYPE = "bench.noop"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["submit", "submit-many", "paced"])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--threads", type=int, default=16)
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
        high = min(args.n, low + args.batch)
        service.submit_many([SubmitRequest(type=TYPE, params={"i": i, "sent": 0.0}, queue=queue)
                             for i in range(low, high)])
        return high - low

    if args.mode in ("submit", "submit-many"):
        result = timed(single if args.mode == "submit" else batch, args.n, args.max_s)
    else:
        result = paced(one, rate=args.rate, count=args.n, threads=args.threads)
    app.close()
    emit(result)


if __name__ == "__main__":
    main()
