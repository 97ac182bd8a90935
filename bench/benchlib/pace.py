"""Client-side helpers shared by every system's client: timing loops and the paced submitter."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable


def paced(submit: Callable[[int, float], None], *, rate: float, count: int, threads: int) -> dict[str, float]:
    """Call ``submit(i, sent)`` ``count`` times on a steady schedule of ``rate`` per second,
    spread over ``threads`` threads (one submit may take longer than 1/rate). A submit that
    falls behind goes out at once; ``achieved_rate`` says whether the schedule was kept."""
    start = time.monotonic() + 0.05
    errors: list[BaseException] = []
    calls: list[float] = []  # how long each submit call took: the part of latency spent in the client

    def lane(k: int) -> None:
        try:
            for i in range(k, count, threads):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                sent = time.time()
                submit(i, sent)
                calls.append(time.time() - sent)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=lane, args=(k,), daemon=True) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
    elapsed = time.monotonic() - start
    calls.sort()
    return {"elapsed_s": elapsed, "n": count, "target_rate": rate, "achieved_rate": count / elapsed,
            "submit_call_p50_ms": calls[len(calls) // 2] * 1000,
            "submit_call_p99_ms": calls[len(calls) * 99 // 100] * 1000}


def timed(step: Callable[[int], int], n: int, max_s: float) -> dict[str, float]:
    """Call ``step(i)`` (it submits from index i and returns how many it sent) until ``n`` are
    sent or ``max_s`` seconds pass; the time cap keeps a slow system from stretching the run."""
    start = time.perf_counter()
    done = 0
    while done < n and time.perf_counter() - start < max_s:
        done += step(done)
    elapsed = time.perf_counter() - start
    return {"elapsed_s": elapsed, "n": done, "rate": done / elapsed, "capped": float(done < n)}


def emit(result: dict[str, float]) -> None:
    """The one line of stdout the harness reads."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
