"""Fault paths of issue 11 on the distributed deployment, with real worker processes on
RabbitMQ + PostgreSQL: nothing stored stays without its message, an owner that lost its lease
stops and is fenced off, and a store that drops connections costs retries, not crashes."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter

import psycopg
import pytest

from conveyor.model import Task, TaskStatus
from conveyor.service import SubmitRequest
from tests.integration.conftest import LEASE_S, Cluster
from tests.processes import wait_for

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def test_a_task_whose_submitter_died_before_publishing_is_published_by_the_reconciler(cluster: Cluster) -> None:
    service = cluster.service
    orphan, _ = service.store.create(service.build_task(SubmitRequest(type="count.noop", params={"n": 1})),
                                     detail="submitted", publish=True)  # stored, never published: a crash
    cluster.start("rescuer", extra_env={"CONVEYOR_OUTBOX_GRACE_S": "0.5"})

    done = wait_for(lambda: (t := service.get(orphan.id)).status.is_final and t, 4 * LEASE_S + 10,
                    "the reconciler to publish the orphan")

    assert done.status is TaskStatus.SUCCEEDED
    assert [e.task_id for e in cluster.executions()] == [str(orphan.id)]
    assert service.store.unpublished(-60.0) == []


def test_an_idempotent_repeat_of_a_task_never_published_publishes_it(cluster: Cluster) -> None:
    service = cluster.service
    first = service.build_task(SubmitRequest(type="count.noop", params={"n": 2}, idempotency_key="once"))
    stored, _ = service.store.create(first, detail="submitted", publish=True)  # its submitter died here
    cluster.start("worker")

    again, created = service.submit(SubmitRequest(type="count.noop", params={"n": 2}, idempotency_key="once"))

    assert (again.id, created) == (stored.id, False)
    done = wait_for(lambda: (t := service.get(stored.id)).status.is_final and t, 20, "the repeat to run it")
    assert done.status is TaskStatus.SUCCEEDED


def test_a_worker_paused_past_its_lease_loses_the_task_stops_its_handler_and_is_fenced_off(
        cluster: Cluster) -> None:
    service = cluster.service
    # No prefetch: RabbitMQ must not hand the paused node the republished message as well.
    sleeper = cluster.start("sleeper", concurrency=1, extra_env={"CONVEYOR_PREFETCH": "0"})
    [task] = cluster.submit([SubmitRequest(type="count.cooperative", params={"seconds": 30.0})], threads=1)
    wait_for(lambda: cluster.executions(), 10, "the task to start on the sleeper")

    sleeper.signal(signal.SIGSTOP)
    try:
        cluster.start("rescuer", concurrency=1)
        # The reaper republishes it once the lease expired a full lease ago; the rescuer runs it.
        wait_for(lambda: any(e.node == "rescuer" for e in cluster.executions()), 4 * LEASE_S + 10,
                 "the rescuer to take the task over")
    finally:
        sleeper.signal(signal.SIGCONT)

    # The sleeper learns at its next renewal that it lost the lease, and stops its handler.
    wait_for(lambda: any(e.type == "count.stopped" and e.node == "sleeper" for e in cluster.executions()),
             LEASE_S + 5, "the sleeper's handler to stop")
    now = service.get(task.id)
    assert (now.status, now.node, now.attempts) == (TaskStatus.RUNNING, "rescuer", 2)
    service.cancel(task.id)  # ends the rescuer's run too (cooperatively)
    wait_for(lambda: any(e.type == "count.stopped" and e.node == "rescuer" for e in cluster.executions()),
             LEASE_S + 5, "the rescuer's handler to stop")
    time.sleep(1.0)  # both late outcomes had time to be written (and fenced off)
    final = service.get(task.id)
    assert final.status is TaskStatus.CANCELLED, "no late outcome overwrote the cancel"
    events = service.events(task.id)
    assert [e.to_status for e in events].count(TaskStatus.SUCCEEDED) == 0
    assert any("lease of node sleeper expired" in (e.detail or "") for e in events)


def test_postgres_backends_terminated_mid_run_cost_retries_not_crashes_or_reruns(
        cluster: Cluster, postgres_schema_url: str) -> None:
    app_name = f"conveyor-test-{uuid.uuid4().hex[:8]}"  # marks the workers' connections, not the client's
    for node in ("a", "b"):
        cluster.start(node, concurrency=4,
                      extra_env={"CONVEYOR_STORE_URL": f"{postgres_schema_url}&application_name={app_name}"})
    stop = threading.Event()
    killed: list[int] = []

    def terminate_backends() -> None:  # only this test's workers' connections
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            while not stop.wait(0.25):
                rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                    " WHERE application_name = %s AND pid <> pg_backend_pid()",
                                    (app_name,)).fetchall()
                killed.append(len(rows))

    killer = threading.Thread(target=terminate_backends, daemon=True)
    killer.start()
    try:
        submitted = cluster.submit([SubmitRequest(type="count.noop", params={"n": i, "sleep_s": 0.01})
                                    for i in range(1500)])
        cluster.wait_finished(len(submitted), timeout_s=90)
    finally:
        stop.set()
        killer.join(5)

    assert sum(killed) >= 5, f"the fault never struck: {killed}"
    final: dict[str, Task] = cluster.all_tasks()
    assert Counter(t.status for t in final.values()) == {TaskStatus.SUCCEEDED: len(submitted)}
    assert all(t.crashes == 0 for t in final.values()), "a store outage was counted as a crash"
    runs = Counter(e.task_id for e in cluster.executions())
    assert set(runs) == {str(t.id) for t in submitted}
    assert max(runs.values()) == 1, f"ran twice: {[k for k, v in runs.items() if v > 1][:5]}"
    assert all(w.alive() for w in cluster.workers)


@pytest.mark.parametrize("hosts", ["127.0.0.1:1,127.0.0.1:5672", "127.0.0.1:5672,127.0.0.1:1"])
def test_a_broker_url_may_list_several_hosts_and_a_dead_one_is_skipped(rabbitmq_url: str, hosts: str) -> None:
    from conveyor.broker.rabbitmq import RabbitmqBroker

    url = rabbitmq_url.replace("127.0.0.1:5672", hosts)
    broker = RabbitmqBroker(url, namespace=f"test-{uuid.uuid4().hex[:8]}")
    try:
        broker.publish(b"hello", queue="multi")
        delivery = broker.consume(["multi"], prefetch=1).get(timeout_s=5)
        assert delivery is not None and delivery.body == b"hello"
        delivery.ack()
    finally:
        broker.delete_topology()
        broker.close()
