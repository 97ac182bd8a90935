"""Client-side helpers shared by every system's client (stdlib only: both venvs import it):
one-at-a-time timing, many submits in flight (threads or coroutines), and the paced submitter
whose schedule can be shared by several client processes."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Paced = dict[str, Any]  # one client process's share of a paced run (see merge_paced)


def shard(count: int, index: int, of: int) -> range:
    """The submit indices client process ``index`` (0-based) of ``of`` sends."""
    return range(index, count, of)


def paced(submit: Callable[[int, float], None], *, rate: float, indices: Sequence[int], threads: int,
          start_at: float) -> Paced:
    """Call ``submit(i, sent)`` for each index at wall time ``start_at + i / rate``, spread
    over ``threads`` threads (one submit may take longer than 1/rate). A submit that falls
    behind goes out at once; its lag behind the schedule is kept, as is each call's duration."""
    errors: list[BaseException] = []
    calls: list[float] = []
    lags: list[float] = []
    cpu0 = time.process_time()

    def lane(k: int) -> None:
        try:
            for i in indices[k::threads]:
                due = start_at + i / rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                sent = time.time()
                submit(i, sent)
                calls.append(time.time() - sent)
                lags.append(sent - due)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=lane, args=(k,), daemon=True) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
    return _paced_result(len(indices), start_at, calls, lags, time.process_time() - cpu0)


async def paced_async(submit: Callable[[int, float], Awaitable[None]], *, rate: float, indices: Sequence[int],
                      start_at: float) -> Paced:
    """``paced`` for an asyncio client: each submit is a coroutine started on schedule, as
    many in flight as the schedule and the system's speed make."""
    calls: list[float] = []
    lags: list[float] = []
    cpu0 = time.process_time()

    async def one(i: int, due: float) -> None:
        sent = time.time()
        lags.append(sent - due)
        await submit(i, sent)
        calls.append(time.time() - sent)

    pending: list[asyncio.Future[None]] = []
    for i in indices:
        due = start_at + i / rate
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.ensure_future(one(i, due)))
    await asyncio.gather(*pending)
    return _paced_result(len(indices), start_at, calls, lags, time.process_time() - cpu0)


def _paced_result(n: int, start_at: float, calls: list[float], lags: list[float], cpu_s: float) -> Paced:
    """``cpu_s``: the client process's CPU (all threads) from the schedule's set-up to its end."""
    return {"n": n, "start_at": start_at, "end_at": time.time(), "cpu_s": cpu_s,
            "calls_ms": [round(c * 1000, 3) for c in calls], "lags_ms": [round(g * 1000, 3) for g in lags]}


def merge_paced(shares: Sequence[Paced], rate: float) -> dict[str, float]:
    """One paced run's figures from its client processes' shares: the rate achieved over
    the whole schedule, how long submit calls took and how far sends lagged the schedule."""
    n = sum(s["n"] for s in shares)
    start = min(s["start_at"] for s in shares)
    elapsed = max(s["end_at"] for s in shares) - start
    calls = sorted(c for s in shares for c in s["calls_ms"])
    lags = sorted(g for s in shares for g in s["lags_ms"])
    return {"n": n, "elapsed_s": elapsed, "target_rate": rate, "achieved_rate": n / elapsed,
            "submit_call_p50_ms": _pct(calls, 50), "submit_call_p99_ms": _pct(calls, 99),
            "send_lag_p50_ms": _pct(lags, 50), "send_lag_p99_ms": _pct(lags, 99),
            "clients": float(len(shares)), "client_cpu_us_per_task": sum(s["cpu_s"] for s in shares) * 1e6 / n}


def _pct(values: Sequence[float], p: int) -> float:
    return values[min(len(values) - 1, len(values) * p // 100)] if values else 0.0


def timed(step: Callable[[int], int], n: int, max_s: float) -> dict[str, float]:
    """Call ``step(i)`` (it submits from index i and returns how many it sent) until ``n`` are
    sent or ``max_s`` seconds pass; the time cap keeps a slow system from stretching the run."""
    start = time.perf_counter()
    done = 0
    while done < n and time.perf_counter() - start < max_s:
        done += step(done)
    elapsed = time.perf_counter() - start
    return {"elapsed_s": elapsed, "n": done, "rate": done / elapsed, "capped": float(done < n)}


async def timed_async(step: Callable[[int], Awaitable[int]], n: int, max_s: float) -> dict[str, float]:
    """``timed`` for an asyncio client."""
    start = time.perf_counter()
    done = 0
    while done < n and time.perf_counter() - start < max_s:
        done += await step(done)
    elapsed = time.perf_counter() - start
    return {"elapsed_s": elapsed, "n": done, "rate": done / elapsed, "capped": float(done < n)}


def in_flight_threads(submit: Callable[[int], None], *, n: int, threads: int, max_s: float) -> dict[str, float]:
    """``threads`` threads each calling ``submit(i)`` (durable on return) for the next index
    until ``n`` are sent or ``max_s`` passes. Each thread first sends one warm-up task (index
    -1) so per-thread connections or channels open outside the timing."""
    lock = threading.Lock()
    state = {"next": 0, "done": 0}
    errors: list[BaseException] = []
    ready = threading.Barrier(threads + 1)
    deadline = [0.0]

    def lane() -> None:
        try:
            submit(-1)
        except BaseException as exc:
            errors.append(exc)
        ready.wait()
        while not errors:
            with lock:
                i = state["next"]
                if i >= n or time.perf_counter() > deadline[0]:
                    return
                state["next"] = i + 1
            try:
                submit(i)
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                state["done"] += 1

    workers = [threading.Thread(target=lane, daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    deadline[0] = time.perf_counter() + max_s
    ready.wait()
    start = time.perf_counter()
    for t in workers:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    done = state["done"]
    return {"elapsed_s": elapsed, "n": done, "rate": done / elapsed, "capped": float(done < n),
            "in_flight": float(threads)}


async def in_flight_async(submit: Callable[[int], Awaitable[None]], *, n: int, in_flight: int,
                          max_s: float) -> dict[str, float]:
    """``in_flight`` coroutines each awaiting ``submit(i)`` (durable on return) for the next
    index until ``n`` are sent or ``max_s`` passes; ``in_flight`` warm-up submits first."""
    await asyncio.gather(*(submit(-1) for _ in range(in_flight)))
    start = time.perf_counter()
    deadline = start + max_s
    state = {"next": 0, "done": 0}

    async def lane() -> None:
        while state["next"] < n and time.perf_counter() < deadline:
            i = state["next"]
            state["next"] = i + 1
            await submit(i)
            state["done"] += 1

    await asyncio.gather(*(lane() for _ in range(in_flight)))
    elapsed = time.perf_counter() - start
    done = state["done"]
    return {"elapsed_s": elapsed, "n": done, "rate": done / elapsed, "capped": float(done < n),
            "in_flight": float(in_flight)}


def emit(result: dict[str, Any]) -> None:
    """The one line of stdout the harness reads."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
