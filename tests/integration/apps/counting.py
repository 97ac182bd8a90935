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

