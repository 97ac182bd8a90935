"""Submitting on both deployments: a submit returns once the task is stored, its message follows
(the outbox), and asyncio callers share transactions (``Conveyor.submit_async``)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

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

    @app.task("math.add")
    def add(a: int, b: int) -> int:
        return a + b

    yield app
    if not isinstance(broker, str):
        broker.delete_topology()  # type: ignore[attr-defined]
    app.close()


@pytest.fixture
def worker(app: Conveyor) -> Iterator[Worker]:
    node = Worker(app, queues=["default"], concurrency=8)
    node.start()
    fetcher = threading.Thread(target=node.fetch_loop, daemon=True)
    fetcher.start()
    yield node
    node.stop()
    fetcher.join(timeout=5)
    node.shutdown()


def test_a_submitted_task_is_stored_on_return_and_its_message_follows(app: Conveyor, worker: Worker) -> None:
    handle = app.submit("math.add", {"a": 2, "b": 3})

    assert app.get(handle.id).status in (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.SUCCEEDED)
    assert handle.result(timeout=10) == 5
    assert app.service.publisher.flush(5)
    assert app.store.unpublished(-60.0) == [], "the outbox intent is gone once the message was sent"


def test_async_submits_from_many_coroutines_share_transactions_and_all_run(
        app: Conveyor, worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    store = app.store
    batches: list[int] = []
    create_many = store.create_many

    def counting(tasks: Any, **kwargs: Any) -> Any:
        batches.append(len(tasks))
        return create_many(tasks, **kwargs)

    monkeypatch.setattr(store, "create_many", counting)
    if hasattr(app.service, "_together") and app.service._together is not None:  # embedded: one file
        together = app.service._together
        inner = together.create_and_publish

        def counting_together(tasks: Any, **kwargs: Any) -> Any:
            batches.append(len(tasks))
            return inner(tasks, **kwargs)

        monkeypatch.setattr(together, "create_and_publish", counting_together)

    async def submit_all() -> list[Any]:
        return await asyncio.gather(*(app.submit_async("math.add", {"a": i, "b": i}) for i in range(300)))

    handles = asyncio.run(submit_all())

    assert sum(batches) == 300
    assert len(batches) < 100, f"submits did not share transactions: {len(batches)} batches"
    assert [h.result(timeout=30) for h in handles] == [2 * i for i in range(300)]
