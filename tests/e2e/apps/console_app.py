"""Task types for the console tests (operator CLI and browser).

``console.late`` is registered only when ``CONSOLE_APP_V2=1``: a worker without it
dead-letters such tasks, a worker with it (the fix deployed) runs them when replayed.
"""

from __future__ import annotations

import os
import time

from conveyor import Conveyor, current_task

app = Conveyor()


@app.task("console.ok", max_attempts=1)
def ok(n: int = 0, sleep_s: float = 0.0) -> dict[str, int]:
    if sleep_s:
        time.sleep(sleep_s)
    return {"n": n}


@app.task("console.fail_first", max_attempts=1)
def fail_first(order: str) -> dict[str, str]:
    """Fails its first attempt for good (max_attempts=1); a manual retry succeeds."""
    if current_task().attempt == 1:
        raise ValueError(f"order {order}: the payment service said no")
    return {"order": order, "charged": "yes"}


if os.environ.get("CONSOLE_APP_V2") == "1":

    @app.task("console.late", max_attempts=1)
    def late(n: int = 0) -> dict[str, int]:
        return {"late": n}
