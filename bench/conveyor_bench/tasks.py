"""The benchmark's task type for Conveyor workers: ``bench.noop`` on queue ``$BENCH_QUEUE``.

Connections come from ``CONVEYOR_BROKER_URL`` / ``CONVEYOR_STORE_URL`` (or the worker's flags).
"""

from __future__ import annotations

import os

from benchlib.record import record

from conveyor import Conveyor

app = Conveyor()


@app.task("bench.noop", queue=os.environ.get("BENCH_QUEUE", "bench"), max_attempts=1)
def noop(i: int = 0, sent: float = 0.0) -> None:
    record(sent)
