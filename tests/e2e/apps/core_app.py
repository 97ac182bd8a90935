"""The task module of the core end-to-end tests, served by real ``conveyor worker`` processes.

Every handler records each EXECUTION in the log of ``tests/execlog.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from conveyor import Abort, Conveyor, Retry, current_task
from tests.execlog import record

app = Conveyor()


@app.task("core.record", max_attempts=3)
def record_task(n: int, sleep_s: float = 0.0) -> dict[str, int]:
    record("core.record")
    if sleep_s:
        time.sleep(sleep_s)
    return {"n": n}


@app.task("core.flaky", max_attempts=5, retry_backoff_s=0.1, retry_backoff_max_s=0.2)
def flaky(fail_times: int) -> dict[str, int]:
    """Fails its first ``fail_times`` attempts, then succeeds."""
    record("core.flaky")
    attempt = current_task().attempt
    if attempt <= fail_times:
        raise ConnectionError(f"attempt {attempt}: upstream not ready")
    return {"attempt": attempt}


@app.task("core.abort", max_attempts=5)
def abort(reason: str) -> None:
    record("core.abort")
    raise Abort(reason)


@app.task("core.always_fails", max_attempts=3, retry_backoff_s=0.05, retry_backoff_max_s=0.1)
def always_fails() -> None:
    record("core.always_fails")
    raise ValueError("boom: always fails")


@app.task("core.retry_later", max_attempts=3)
def retry_later(delay_s: float) -> dict[str, int]:
    record("core.retry_later")
    attempt = current_task().attempt
    if attempt == 1:
        raise Retry(delay_s=delay_s)
    return {"attempt": attempt}


@app.task("core.sleepy", max_attempts=1, timeout=1.0)
def sleepy(seconds: float) -> str:
    """Sleeps past its 1 s timeout (thread pool: the worker stops waiting for it)."""
    record("core.sleepy")
    time.sleep(seconds)
    return "woke up"


@app.task("core.marker", max_attempts=1)
def marker(seconds: float, path: str) -> str:
    """For ``--pool process``: sleeps, then writes ``path``. Killed by a hard timeout, it never writes."""
    record("core.marker")
    time.sleep(seconds)
    Path(path).write_text("written")
    return "written"


@app.task("core.slow", max_attempts=3)
def slow(seconds: float) -> dict[str, float]:
    """For crash and shutdown tests: runs long enough to be interrupted."""
    record("core.slow")
    time.sleep(seconds)
    return {"slept": seconds}


@app.task("core.suicide", max_attempts=5)
def suicide() -> None:
    """A poison task: kills its own worker process on every attempt."""
    record("core.suicide")
    os.kill(os.getpid(), signal.SIGKILL)


@app.task("core.async_add")
async def async_add(a: int, b: int) -> dict[str, Any]:
    record("core.async_add")
    await asyncio.sleep(0.01)
    return {"sum": a + b, "on_loop": asyncio.get_running_loop().is_running()}


@app.task("core.send_email")
def send_email(to: str, subject: str) -> dict[str, str]:
    record("core.send_email")
    return {"sent_to": to, "subject": subject}
