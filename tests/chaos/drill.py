"""The run every load scenario shares: start workers, submit in the background while fault loops
strike, wait for the work to end, then settle and count with a fresh store connection."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

from conveyor.errors import ConveyorError
from conveyor.store import open_store
from tests.chaos.harness import CHAOS_APP, Repeat, Submitter, Tally, count, work_requests
from tests.integration.conftest import Cluster
from tests.processes import WorkerProcess

CONCURRENCY = 8


def start_workers(cluster: Cluster, count: int = 3, *, prefix: str = "w", **kwargs: Any) -> list[WorkerProcess]:
    workers = [cluster.start(f"{prefix}{i + 1}", concurrency=CONCURRENCY, wait_ready=False, app=CHAOS_APP, **kwargs)
               for i in range(count)]
    for worker in workers:
        cluster.wait_ready(worker)
    return workers


def all_final(cluster: Cluster, expected: int) -> bool:
    with contextlib.suppress(ConveyorError):
        counts = cluster.service.counts()
        done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
        return done >= expected and sum(counts.values()) == done
    return False


def drive(cluster: Cluster, scenario: str, *, tasks: int, sleep_s: float, faults: Sequence[Repeat],
          window_s: float, settle_s: float, notes: dict[str, Any] | None = None) -> Tally:
    """Submit ``tasks`` chaos.work tasks while ``faults`` run; faults stop when the work is done and
    each fault struck its ``min_runs``, or ``window_s`` passed; then settle (bounded) and count."""
    started = time.monotonic()
    submitter = Submitter(cluster.service, work_requests(tasks, scenario, sleep_s=sleep_s))
    submitter.start()
    for fault in faults:
        fault.start()
    try:
        deadline = started + window_s
        while time.monotonic() < deadline:
            struck = all(f.runs >= f.min_runs for f in faults)
            if struck and not submitter.is_alive() and all_final(cluster, len(submitter.accepted)):
                break
            time.sleep(0.5)
    finally:
        for fault in faults:
            fault.stop()
    submitter.join(timeout=max(0.0, settle_s))
    store = open_store(cluster.store_url)
    try:
        run_notes = {"refused_batches": len(submitter.refusals), "abandoned": submitter.abandoned,
                     **{f"{f.name}_runs": f.runs for f in faults}, **(notes or {})}
        errors = [e for f in faults for e in f.errors]
        if errors:
            run_notes["fault_errors"] = errors[:3]
        return count(scenario, accepted=submitter.accepted, store=store, exec_log=cluster.exec_log,
                     started=started, settle_s=settle_s, expected=len(submitter.accepted), notes=run_notes)
    finally:
        store.close()
