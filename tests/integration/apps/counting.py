"""The task module of the distributed end-to-end tests, served by real ``conveyor worker``
processes on RabbitMQ + PostgreSQL.

Every handler appends one line per EXECUTION (``task_id node pid attempt time``) to the file
named by ``CONVEYOR_TEST_EXEC_LOG``, so a test can count how often each task really ran and
where. Lines are far below PIPE_BUF and the file is opened with O_APPEND, so lines written by
several processes at once never interleave.
"""

from __future__ import annotations

import os
import time

from conveyor import Conveyor, current_task

EXEC_LOG_ENV = "CONVEYOR_TEST_EXEC_LOG"

app = Conveyor()


def record_execution() -> None:
    path = os.environ.get(EXEC_LOG_ENV)
    if not path:
        return
    ctx = current_task()
    line = f"{ctx.id}\t{ctx.node}\t{os.getpid()}\t{ctx.attempt}\t{time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task("count.noop", max_attempts=3)
def noop(n: int, sleep_s: float = 0.0) -> dict[str, int]:
    record_execution()
    if sleep_s:
        time.sleep(sleep_s)
    return {"n": n}


@app.task("count.long", max_attempts=3)
def long(seconds: float, rerun_seconds: float | None = None) -> dict[str, float]:
    """Sleeps ``seconds`` (``rerun_seconds`` from the second attempt on, to keep a crash
    test short); records its execution when it starts."""
    record_execution()
    attempt = current_task().attempt
    slept = seconds if attempt == 1 or rerun_seconds is None else rerun_seconds
    time.sleep(slept)
    return {"slept": slept}
