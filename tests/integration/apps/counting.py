"""The task module of the distributed end-to-end tests, served by real ``conveyor worker``
processes on RabbitMQ + PostgreSQL.

Every handler records each EXECUTION in the log of ``tests/execlog.py``.
"""

from __future__ import annotations

import time

from conveyor import Conveyor, current_task
from tests.execlog import record

app = Conveyor()


@app.task("count.noop", max_attempts=3)
def noop(n: int, sleep_s: float = 0.0) -> dict[str, int]:
    record(current_task().type)
    if sleep_s:
        time.sleep(sleep_s)
    return {"n": n}


@app.task("count.long", max_attempts=3)
def long(seconds: float, rerun_seconds: float | None = None) -> dict[str, float]:
    """Sleeps ``seconds`` (``rerun_seconds`` from the second attempt on, to keep a crash
    test short); records its execution when it starts."""
    record(current_task().type)
    attempt = current_task().attempt
    slept = seconds if attempt == 1 or rerun_seconds is None else rerun_seconds
    time.sleep(slept)
    return {"slept": slept}



@app.task("count.cooperative", max_attempts=5)
def cooperative(seconds: float) -> dict[str, object]:
    """Runs ``seconds`` unless told to stop (cancelled, or its node lost the lease); records
    its start, and (as type ``count.stopped``) that it stopped early."""
    record(current_task().type)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if current_task().cancelled:
            record("count.stopped")
            return {"stopped": True}
        time.sleep(0.02)
    return {"stopped": False}
