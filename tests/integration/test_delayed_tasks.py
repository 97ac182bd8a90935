"""Delayed and ETA tasks start at their time (within 1 s), on both deployments.

The broker holds a delayed message (the embedded broker's available_at; RabbitMQ's per-delay
TTL queues), so no scheduler process is involved and none has to survive anything."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from conveyor import Conveyor
from conveyor.config import Settings
from conveyor.model import TaskStatus
from conveyor.worker.worker import Worker


@pytest.fixture(params=["embedded", "distributed"])
def app(request: pytest.FixtureRequest) -> Iterator[Conveyor]:
    if request.param == "embedded":
        url = request.getfixturevalue("sqlite_url")
        broker: object = url
        store_url = url
    else:
        from conveyor.broker.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(request.getfixturevalue("rabbitmq_url"), namespace=f"test-{uuid.uuid4().hex[:8]}")
        store_url = request.getfixturevalue("postgres_schema_url")
    app = Conveyor(broker=broker, store=store_url,  # type: ignore[arg-type]
                   settings=Settings(heartbeat_s=0.5, lease_s=3.0, grace_s=2.0))

    @app.task("clock.now")
    def clock_now() -> float:
        return time.time()

    yield app
    if not isinstance(broker, str):
        broker.delete_topology()  # type: ignore[attr-defined]
    app.close()


@pytest.fixture
def worker(app: Conveyor) -> Iterator[Worker]:
    node = Worker(app, queues=["default"], concurrency=4)
    node.start()
    fetcher = threading.Thread(target=node.fetch_loop, daemon=True)
    fetcher.start()
    yield node
    node.stop()
    fetcher.join(timeout=5)
    node.shutdown()


def test_delayed_tasks_start_within_a_second_of_their_time(app: Conveyor, worker: Worker) -> None:
    submitted = time.time()
    delays = [0.5, 1.5, 2.0]
    handles = [app.submit("clock.now", delay=d) for d in delays]
    assert all(h.status() is TaskStatus.SCHEDULED for h in handles)
    for handle, delay in zip(handles, delays, strict=True):
        started_at = handle.result(timeout=15)
        due = submitted + delay
        assert due - 0.05 <= started_at <= due + 1.0, (delay, started_at - due)


def test_an_eta_task_waits_for_its_eta(app: Conveyor, worker: Worker) -> None:
    eta = time.time() + 1.5
    handle = app.submit("clock.now", eta=eta)
    time.sleep(0.8)
    assert handle.status() is TaskStatus.SCHEDULED
    started_at = handle.result(timeout=15)
    assert eta - 0.05 <= started_at <= eta + 1.0
    timeline = [e.to_status.value for e in app.service.events(handle.id)]
    assert timeline[:2] == ["scheduled", "running"]
