"""The task module served by the chaos scenarios' workers. Every handler logs the start and the
end of each run in the execution log (``tests/execlog.py``), so "ran twice" counts runs that
really finished."""

from __future__ import annotations

import threading
import time
from typing import Any

from conveyor import Conveyor, current_task
from tests.execlog import record

app = Conveyor()
# Not time.sleep: under libfaketime (the skewed-clock scenario, monotonic clock left real) it
# fails with EINVAL; a condition wait does not.
pause = threading.Event().wait


@app.task("chaos.work", max_attempts=3)
def work(n: int, sleep_s: float = 0.0) -> dict[str, int]:
    record("chaos.work")
    if sleep_s:
        pause(sleep_s)
    record("chaos.work", phase="end")
    return {"n": n}


@app.task("chaos.long", max_attempts=3)
def long(seconds: float) -> dict[str, float]:
    """Runs ``seconds`` in small steps and stops early, without logging an end, once its worker
    says it no longer owns the task (a cooperative handler, as docs/architecture.md asks)."""
    record("chaos.long")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if current_task().cancelled:
            record("chaos.long", phase="stopped")
            raise RuntimeError("stopped: this node no longer owns the task")
        pause(0.1)
    record("chaos.long", phase="end")
    return {"slept": seconds}


@app.task("chaos.any", max_attempts=3)
def anything(**params: Any) -> int:
    """The fuzzing scenarios' handler: takes whatever params a message carries."""
    record("chaos.any")
    record("chaos.any", phase="end")
    return len(params)
