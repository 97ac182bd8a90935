"""The conformance handlers for Conveyor's Python worker:
``conveyor worker conformance_app --queues conformance`` (with this folder on PYTHONPATH).
Each handler first appends its run to the file named by CONVEYOR_CONFORMANCE_LOG."""

from __future__ import annotations

import os
import time
from typing import Any

from conveyor import Abort, Conveyor, Retry, current_task

app = Conveyor()


def record(task_type: str) -> None:
    ctx = current_task()
    line = f"{ctx.id}\t{task_type}\t{ctx.attempt}\t{ctx.node}\t{os.getpid()}\t{time.time():.6f}\n"
    fd = os.open(os.environ["CONVEYOR_CONFORMANCE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task("conformance.echo", queue="conformance")
def echo(**params: Any) -> dict[str, Any]:
    record("conformance.echo")
    return params


@app.task("conformance.add", queue="conformance")
def add(a: int, b: int) -> int:
    record("conformance.add")
    return a + b


@app.task("conformance.fail", queue="conformance")
def fail(message: str) -> None:
    record("conformance.fail")
    raise RuntimeError(message)


@app.task("conformance.retry", queue="conformance")
def retry(delay_s: float) -> str:
    record("conformance.retry")
    if current_task().attempt == 1:
        raise Retry(delay_s)
    return "second try"


@app.task("conformance.abort", queue="conformance")
def abort() -> None:
    record("conformance.abort")
    raise Abort("aborted on purpose")


@app.task("conformance.sleep", queue="conformance")
def sleep(seconds: float) -> None:
    record("conformance.sleep")
    time.sleep(seconds)
