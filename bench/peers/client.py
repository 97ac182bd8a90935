"""Peers' benchmark client: ``python -m peers.client SYSTEM MODE --n N [...]``.

SYSTEM: celery, dramatiq, huey. MODE: ``submit`` (one at a time; confirmed unless
BENCH_CONFIRM=0) or ``paced`` (steady rate, ``sent`` in the arguments). One warm-up task is
sent before the timing starts. Prints one JSON line with the timing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from benchlib.pace import emit, paced, timed


def sender(system: str) -> Callable[[int, float], None]:
    if system == "celery":
        from peers.celery_app import noop as celery_noop

        return lambda i, sent: celery_noop.apply_async((i, sent))
    if system == "dramatiq":
        from peers.dramatiq_app import noop as dramatiq_noop

        return lambda i, sent: dramatiq_noop.send(i, sent)
    if system == "huey":
        from peers.huey_app import noop as huey_noop

        return lambda i, sent: huey_noop(i, sent)
    raise SystemExit(f"unknown system {system!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=["celery", "dramatiq", "huey"])
    parser.add_argument("mode", choices=["submit", "paced"])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--max-s", type=float, default=30.0, help="stop submitting after this long")
    args = parser.parse_args()
    send = sender(args.system)
    send(-1, 0.0)  # connect and declare outside the timing
    if args.mode == "submit":
        def step(low: int) -> int:
            high = min(args.n, low + 100)  # check the clock every 100 sends
            for i in range(low, high):
                send(i, 0.0)
            return high - low
        result = timed(step, args.n, args.max_s)
    else:
        result = paced(send, rate=args.rate, count=args.n, threads=args.threads)
    emit(result)


if __name__ == "__main__":
    main()
