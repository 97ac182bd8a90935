"""Handlers for the cancellation tests: one cooperative, one that only a kill can stop."""

from __future__ import annotations

import time
from pathlib import Path

from conveyor import Conveyor, current_task

app = Conveyor()


@app.task("cancel.cooperative", max_attempts=1)
def cooperative(limit_s: float, marker: str | None = None) -> str:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if current_task().cancelled:
            if marker:
                Path(marker).write_text("stopped early")
            return "stopped early"
        time.sleep(0.05)
    return "ran to the end"


@app.task("cancel.stubborn", max_attempts=1)
def stubborn(seconds: float, marker: str) -> str:
    time.sleep(seconds)
    Path(marker).write_text("finished")  # must never happen once the task is cancelled
    return "finished"
