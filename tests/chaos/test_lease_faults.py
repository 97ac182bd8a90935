"""Ownership under faults (issue 11, hole 2): a worker frozen past its lease, and a worker whose
clock runs 65 s ahead. The design (docs/BRIEF "hot path v2"): leases are decided on the store's
clock, and an owner that lost its lease learns it at its next renewal and stops its handler, its
late outcome fenced off by the attempt number.

Both run on the shared servers (own vhost + schema): only Conveyor processes are disturbed.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from conveyor.service import SubmitRequest
from conveyor.store import open_store
from tests.chaos.drill import start_workers
from tests.chaos.harness import CHAOS_APP, count, work_requests
from tests.execlog import read_executions
from tests.integration.conftest import LEASE_S, Cluster
from tests.processes import WorkerProcess, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(120)]

FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SKEW_S = 65


def started_on(cluster: Cluster, task_id: str, timeout_s: float = 20) -> str:
    """The node that started the first run of ``task_id``."""
    runs = wait_for(lambda: [e for e in cluster.executions() if e.task_id == task_id], timeout_s,
                    f"task {task_id} to start")
    return str(runs[0].node)


def submit_long(cluster: Cluster, seconds: float) -> str:
    task, _ = cluster.service.submit(SubmitRequest(type="chaos.long", params={"seconds": seconds}))
    return str(task.id)


def test_a_worker_sigstopped_past_its_lease_stops_its_copy_when_it_wakes(cluster: Cluster) -> None:
    workers = {w.node_id: w for w in start_workers(cluster, 2)}
    started = time.monotonic()
    long_id = submit_long(cluster, seconds=5 * LEASE_S)
    frozen: WorkerProcess = workers[started_on(cluster, long_id)]
    frozen.signal(signal.SIGSTOP)
    try:
        # Frozen for the lease, plus the reaper's wait of one more lease, plus its period.
        runs = wait_for(lambda: [e for e in cluster.executions() if e.task_id == long_id and e.node != frozen.node_id],
                        6 * LEASE_S, "another node to take the frozen task over")
    finally:
        frozen.signal(signal.SIGCONT)
    accepted = [long_id] + [str(t.id) for t in cluster.submit(work_requests(100, f"sigstop-{uuid.uuid4().hex[:6]}"))]
    store = open_store(cluster.store_url)
    try:
        tally = count("worker-sigstopped-past-lease", accepted=accepted, store=store, exec_log=cluster.exec_log,
                      started=started, settle_s=40, notes={"taken_over_by": runs[0].node})
    finally:
        store.close()
    tally.publish()
    ends = [e for e in read_executions(cluster.exec_log, phase="end") if e.task_id == long_id]
    assert not tally.problems(), tally.problems()
    assert len(ends) == 1, f"both copies of the long task ran to the end: {ends}"


def test_a_worker_with_a_clock_65_s_ahead_takes_over_no_healthy_task(cluster: Cluster) -> None:
    assert FAKETIME_LIB.exists(), "faketime is not installed (scripts/install-debian-packages.sh)"
    (honest,) = start_workers(cluster, 1)
    started = time.monotonic()
    long_id = submit_long(cluster, seconds=6 * LEASE_S)
    assert started_on(cluster, long_id) == honest.node_id
    skewed = cluster.start("skewed", concurrency=4, app=CHAOS_APP, extra_env={
        "LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": f"+{SKEW_S}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    accepted = [long_id] + [str(t.id) for t in cluster.submit(work_requests(100, f"skew-{uuid.uuid4().hex[:6]}"))]
    store = open_store(cluster.store_url)
    try:
        tally = count("worker-clock-65s-ahead", accepted=accepted, store=store, exec_log=cluster.exec_log,
                      started=started, settle_s=40)
        long_task = store.get(uuid.UUID(long_id))
    finally:
        store.close()
    skewed_runs = sum(1 for e in cluster.executions() if e.node == skewed.node_id)
    tally.notes.update(long_task_crashes=long_task.crashes, skewed_node_runs=skewed_runs)
    tally.publish()
    long_runs = [e for e in cluster.executions() if e.task_id == long_id]
    assert not tally.problems(), tally.problems()
    assert skewed_runs > 0, "the skewed worker ran nothing: it should work normally"
    assert long_task.crashes == 0 and len(long_runs) == 1, (
        f"a healthy task was taken over: crashes={long_task.crashes}, runs on {[e.node for e in long_runs]}")
