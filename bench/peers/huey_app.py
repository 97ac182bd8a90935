"""Huey app for the embedded comparison: SqliteHuey on the file ``$BENCH_HUEY_DB``."""

from __future__ import annotations

import os

from benchlib.record import record
from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ.get("BENCH_HUEY_DB", "/tmp/bench-huey.db"))


@huey.task()
def noop(i: int = 0, sent: float = 0.0) -> None:
    record(sent)
