"""Sample task types used by ``conveyor demo`` (and handy to try a deployment)."""

from __future__ import annotations

import asyncio
import random
import time

from conveyor import Abort, Conveyor, Retry, current_task

app = Conveyor()


@app.task("demo.add", max_attempts=3)
def add(a: int, b: int) -> dict[str, int]:
    time.sleep(random.uniform(0.02, 0.2))
    return {"sum": a + b}


@app.task("demo.fetch", max_attempts=3)
async def fetch(url: str) -> dict[str, str]:
    await asyncio.sleep(random.uniform(0.02, 0.2))  # async handlers run on the worker's event loop
    return {"url": url, "status": "200"}


@app.task("demo.flaky", max_attempts=3, retry_backoff_s=0.5)
def flaky(n: int) -> str:
    """Fails its first attempt, then succeeds on retry."""
    if current_task().attempt < 2:
        raise ConnectionError(f"upstream {n} not ready yet")
    return f"ok on attempt {current_task().attempt}"


@app.task("demo.slow", max_attempts=1, timeout=1.0)
def slow(seconds: float) -> str:
    time.sleep(seconds)  # longer than its 1 s timeout
    return "never"


@app.task("demo.broken", max_attempts=2, retry_backoff_s=0.2)
def broken(reason: str) -> None:
    raise Abort(reason)


@app.task("demo.retry_later", max_attempts=2)
def retry_later() -> str:
    if current_task().attempt < 2:
        raise Retry(delay_s=0.3)
    return "done"
