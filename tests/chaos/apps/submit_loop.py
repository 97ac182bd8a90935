"""A submitting client as its own process (so a scenario can SIGKILL it mid-submit): submits
chaos.work tasks one by one with idempotency keys ``PREFIX-i`` and prints ``accepted KEY ID``
after each call returned. Usage: ``python -m tests.chaos.apps.submit_loop PREFIX COUNT PAUSE_S``
with CONVEYOR_BROKER_URL / CONVEYOR_STORE_URL set."""

from __future__ import annotations

import sys
import time

from conveyor import config
from conveyor.broker import open_broker
from conveyor.service import SubmitRequest, TaskService
from conveyor.store import open_store


def main(prefix: str, count: int, pause_s: float) -> None:
    settings = config.load()
    service = TaskService(open_store(settings.store_url), open_broker(settings.broker_url))
    for i in range(count):
        key = f"{prefix}-{i}"
        task, _ = service.submit(SubmitRequest(type="chaos.work", params={"n": i}, idempotency_key=key))
        print(f"accepted {key} {task.id}", flush=True)
        time.sleep(pause_s)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
