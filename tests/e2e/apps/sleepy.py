"""Task module of the node-watch end-to-end test: a task that takes a few seconds."""

from __future__ import annotations

import time

from conveyor import Conveyor

app = Conveyor()


@app.periodic(cron="0 12 1 1 *", timezone="Europe/Paris", name="sleepy.new-year-nap", params={"seconds": 0})
@app.task("sleepy.nap", max_attempts=3)
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"
