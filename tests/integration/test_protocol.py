"""docs/protocol.md holds: clients and workers written against the document alone (aio-pika and
json, no conveyor import) interoperate with Conveyor on the real RabbitMQ and PostgreSQL.

The "foreign" side lives in ``ForeignClient``; everything else is Conveyor. Each test uses its
own namespace (``test-<hex>`` replaces ``conveyor`` in every AMQP name) and its own schema.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from conveyor.app import Conveyor
from conveyor.broker.rabbitmq import RabbitmqBroker
from conveyor.config import Settings
from conveyor.errors import TaskNotFound
from conveyor.foreign import ClaimRequest, LeaseTerms, claim
from conveyor.model import Task, TaskStatus
from conveyor.reports import ReportConsumer, apply_report
from conveyor.service import SubmitRequest, TaskService
from conveyor.store.postgres import PostgresStore
from conveyor.worker.worker import Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WAIT_S = 10.0
LEASE_S = 5.0


# -- the foreign side: aio-pika + json only, written from docs/protocol.md ----------------------
def utc_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class ForeignClient:
    """A submitter and worker "in another language": only what docs/protocol.md says."""

    def __init__(self, url: str, namespace: str, node: str = "foreign-1") -> None:
        self.url, self.ns, self.node = url, namespace, node
        self.inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def __aenter__(self) -> ForeignClient:
        self.connection = await aio_pika.connect(self.url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        await self.channel.set_qos(prefetch_count=1)
        self.exchange = await self.channel.declare_exchange(self.ns, aio_pika.ExchangeType.DIRECT, durable=True)
        await self.declare("_reports")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.connection.close()

    async def declare(self, queue: str) -> aio_pika.abc.AbstractQueue:
        amqp_queue = await self.channel.declare_queue(f"{self.ns}.{queue}", durable=True,
                                                      arguments={"x-max-priority": 10})
        await amqp_queue.bind(self.exchange, routing_key=queue)
        return amqp_queue

    async def publish(self, routing_key: str, body: dict[str, Any], priority: int = 0) -> None:
        """Publish with confirms: returns once RabbitMQ has the message."""
        await self.exchange.publish(aio_pika.Message(
            json.dumps(body).encode("utf-8"), content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, priority=priority,
        ), routing_key=routing_key)

    async def subscribe(self, queue: str) -> None:
        await (await self.declare(queue)).consume(self.inbox.put)

    async def take(self, timeout_s: float = WAIT_S) -> tuple[dict[str, Any], AbstractIncomingMessage]:
        delivery = await asyncio.wait_for(self.inbox.get(), timeout_s)
        return json.loads(delivery.body), delivery

    async def report(self, task: dict[str, Any], status: str, **fields: Any) -> None:
        await self.publish("_reports", {"protocol": 1, "id": task["id"], "attempt": task["attempt"],
                                        "node": self.node, "status": status, "at": utc_now(), **fields})


# -- Conveyor's side ----------------------------------------------------------------------------
@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def app(rabbitmq_url: str, postgres_schema_url: str, namespace: str) -> Iterator[Conveyor]:
    broker = RabbitmqBroker(rabbitmq_url, namespace=namespace)
    store = PostgresStore(postgres_schema_url)
    settings = Settings(broker_url=rabbitmq_url, store_url=postgres_schema_url, lease_s=LEASE_S,
                        heartbeat_s=0.5, grace_s=2.0)
    app = Conveyor(broker=broker, store=store, settings=settings)

    @app.task("proto.add", queue="proto")
    def add(a: int, b: int) -> int:
        return a + b

    yield app
    broker.delete_topology()
    app.close()


@pytest.fixture
def service(app: Conveyor) -> TaskService:
    return app.service


@pytest.fixture
def reports(service: TaskService) -> Iterator[ReportConsumer]:
    consumer = ReportConsumer(service, lease_s=LEASE_S)
    consumer.start()
    yield consumer
    consumer.stop()


@pytest.fixture
def worker(app: Conveyor) -> Iterator[Worker]:
    worker = Worker(app, queues=["proto"], concurrency=2, node_id="py-node")
    worker.start()
    thread = threading.Thread(target=worker.fetch_loop, daemon=True)
    thread.start()
    yield worker
    worker.stop()
    thread.join(5)
    worker.shutdown()


def wait_for(check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def task_in(service: TaskService, task_id: str | uuid.UUID, status: TaskStatus) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return service.get(uuid.UUID(str(task_id))).status is status
        except TaskNotFound:
            return False
    return check


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def timeline(service: TaskService, task: Task) -> list[str]:
    return [e.to_status.value for e in service.events(task.id)]


# -- submitting without Python ------------------------------------------------------------------
def test_a_task_published_straight_to_the_exchange_runs_on_a_conveyor_worker(
        app: Conveyor, service: TaskService, worker: Worker, rabbitmq_url: str, namespace: str) -> None:
    full: dict[str, Any] = {"protocol": 1, "id": str(uuid.uuid4()), "type": "proto.add", "params": {"a": 2, "b": 3},
            "queue": "proto", "priority": 5, "attempt": 1, "max_attempts": 3, "timeout": 10, "eta": None,
            "trace": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}
    minimal: dict[str, Any] = {"protocol": 1, "id": str(uuid.uuid4()), "type": "proto.add", "params": {"a": 1, "b": 1},
               "queue": "proto"}

    async def submit() -> None:
        async with ForeignClient(rabbitmq_url, namespace) as client:
            await client.declare("proto")
            await client.publish("proto", full, priority=5)
            await client.publish("proto", minimal)

    run(submit())
    wait_for(task_in(service, full["id"], TaskStatus.SUCCEEDED))
    wait_for(task_in(service, minimal["id"], TaskStatus.SUCCEEDED))
    task = service.get(uuid.UUID(full["id"]))
    assert (task.result, task.priority, task.timeout, task.attempts, task.node) == (5, 5, 10.0, 1, "py-node")
    assert service.events(task.id)[0].detail == "adopted from a broker message"
    assert service.get(uuid.UUID(minimal["id"])).result == 2


# -- acting as a worker without Python ----------------------------------------------------------
def test_a_foreign_worker_runs_a_submitted_task_and_its_reports_are_applied(
        service: TaskService, reports: ReportConsumer, rabbitmq_url: str, namespace: str) -> None:
    submitted, _ = service.submit(SubmitRequest(type="php.resize", params={"w": 64}, queue="foreign", priority=4))

    async def work() -> tuple[dict[str, Any], AbstractIncomingMessage]:
        async with ForeignClient(rabbitmq_url, namespace) as client:
            await client.subscribe("foreign")
            task, delivery = await client.take()
            await client.report(task, "running")
            await client.report(task, "succeeded", result={"width": task["params"]["w"]})
            await delivery.ack()
            return task, delivery

    task, delivery = run(work())
    assert task["id"] == str(submitted.id) and task["attempt"] == 1 and task["priority"] == 4
    assert (delivery.content_type, delivery.delivery_mode, delivery.priority) == ("application/json", 2, 4)
    wait_for(task_in(service, submitted.id, TaskStatus.SUCCEEDED))
    done = service.get(submitted.id)
    assert (done.result, done.node, done.attempts) == ({"width": 64}, "foreign-1", 1)
    assert timeline(service, done) == ["queued", "running", "succeeded"]

    async def replay() -> None:  # a duplicate, a late running report, a stale attempt
        async with ForeignClient(rabbitmq_url, namespace) as client:
            await client.report(task, "succeeded", result={"width": 0})
            await client.report(task, "running")
            await client.report({**task, "attempt": 2}, "failed", error={"type": "E", "message": "late"})

    applied = reports.applied
    run(replay())
    wait_for(lambda: reports.applied == applied + 3)
    after = service.get(submitted.id)
    assert (after.status, after.result, after.version) == (TaskStatus.SUCCEEDED, {"width": 64}, done.version)
    assert timeline(service, after) == ["queued", "running", "succeeded"]


def test_a_failed_report_with_attempts_left_sends_the_next_attempt(
        service: TaskService, reports: ReportConsumer, rabbitmq_url: str, namespace: str) -> None:
    submitted, _ = service.submit(SubmitRequest(type="php.flaky", params={}, queue="foreign", max_attempts=2))

    async def work() -> list[dict[str, Any]]:
        async with ForeignClient(rabbitmq_url, namespace) as client:
            await client.subscribe("foreign")
            first, delivery = await client.take()
            await client.report(first, "running")
            await client.report(first, "failed", error={"type": "IOError", "message": "disk full"})
            await delivery.ack()
            second, delivery = await client.take()
            await client.report(second, "succeeded", result="ok")  # no running report: allowed
            await delivery.ack()
            return [first, second]

    first, second = run(work())
    assert (first["attempt"], second["attempt"], second["id"]) == (1, 2, str(submitted.id))
    wait_for(task_in(service, submitted.id, TaskStatus.SUCCEEDED))
    done = service.get(submitted.id)
    assert (done.attempts, done.result, done.error) == (2, "ok", None)
    assert timeline(service, done) == ["queued", "running", "retrying", "running", "succeeded"]
    assert "IOError" in (service.events(done.id)[2].detail or "")


def test_a_failed_report_on_the_last_attempt_or_without_retry_fails_the_task(
        service: TaskService) -> None:
    last, _ = service.submit(SubmitRequest(type="t", params={}, queue="foreign", max_attempts=1))
    no_retry, _ = service.submit(SubmitRequest(type="t", params={}, queue="foreign", max_attempts=5))
    error = {"type": "Fatal", "message": "no", "traceback": "line 1"}
    assert apply_report(service, _report(last, 1, "failed", error=error), lease_s=LEASE_S) == "failed"
    body = _report(no_retry, 1, "failed", error=error, retry=False)
    assert apply_report(service, body, lease_s=LEASE_S) == "failed"
    for task in (last, no_retry):
        failed = service.get(task.id)
        assert (failed.status, failed.error, failed.attempts) == (TaskStatus.FAILED, error, 1)


# -- the report rules ---------------------------------------------------------------------------
def _report(task: Task, attempt: int, status: str, node: str = "n1", **fields: Any) -> bytes:
    return json.dumps({"protocol": 1, "id": str(task.id), "attempt": attempt, "node": node,
                       "status": status, "at": utc_now(), **fields}).encode()


def test_running_reports_start_renew_and_never_steal_a_live_attempt(service: TaskService) -> None:
    task, _ = service.submit(SubmitRequest(type="t", params={}, queue="foreign"))
    assert apply_report(service, _report(task, 1, "running"), lease_s=LEASE_S) == "running attempt 1 on n1"
    started = service.get(task.id)
    time.sleep(0.01)
    assert apply_report(service, _report(task, 1, "running"), lease_s=LEASE_S) == "lease renewed"
    renewed = service.get(task.id)
    assert renewed.lease_until is not None and started.lease_until is not None
    assert renewed.lease_until > started.lease_until
    outcome = apply_report(service, _report(task, 1, "running", node="n2"), lease_s=LEASE_S)
    assert outcome.startswith("ignored") and service.get(task.id).node == "n1"
    assert apply_report(service, _report(task, 3, "succeeded"), lease_s=LEASE_S).startswith("ignored")
    assert service.get(task.id).status is TaskStatus.RUNNING


def test_a_running_report_never_takes_over_an_expired_lease_a_claim_does(service: TaskService) -> None:
    task, _ = service.submit(SubmitRequest(type="t", params={}, queue="foreign"))
    apply_report(service, _report(task, 1, "running"), lease_s=0.01)
    time.sleep(0.05)
    outcome = apply_report(service, _report(task, 1, "running", node="n2"), lease_s=LEASE_S)
    assert outcome.startswith("ignored: attempt 1 runs on n1") and service.get(task.id).node == "n1"
    answer = claim(service, ClaimRequest(id=task.id, attempt=1, node="n2"), LeaseTerms(lease_s=LEASE_S))
    assert (answer.decision, answer.attempt) == ("run", 2)
    taken = service.get(task.id)
    assert (taken.node, taken.attempts, taken.crashes) == ("n2", 2, 1)


def test_reports_for_finished_or_cancelled_tasks_change_nothing(service: TaskService) -> None:
    task, _ = service.submit(SubmitRequest(type="t", params={}, queue="foreign"))
    service.cancel(task.id)
    before = service.get(task.id)
    for status in ("running", "succeeded"):
        outcome = apply_report(service, _report(task, 1, status, result=1), lease_s=LEASE_S)
        assert outcome == "ignored: task already cancelled"
    assert service.get(task.id) == before


def test_a_heartbeat_report_lists_the_foreign_node(service: TaskService) -> None:
    beat = {"protocol": 1, "kind": "heartbeat", "node": "php-7", "queues": ["foreign"], "concurrency": 3,
            "in_flight": 1, "done": 12, "host": "web-1", "pid": 99}
    assert apply_report(service, json.dumps(beat).encode(), lease_s=LEASE_S) == "heartbeat from php-7"
    node = next(n for n in service.nodes() if n.id == "php-7")
    assert (node.queues, node.concurrency, node.in_flight, node.done, node.host, node.pid, node.status) == (
        ("foreign",), 3, 1, 12, "web-1", 99, "live")
    started = node.started_at
    apply_report(service, json.dumps({**beat, "done": 13}).encode(), lease_s=LEASE_S)
    again = next(n for n in service.nodes() if n.id == "php-7")
    assert (again.done, again.started_at) == (13, started)


def test_malformed_reports_and_reports_for_unknown_tasks_are_dead_lettered(
        app: Conveyor, service: TaskService, reports: ReportConsumer, rabbitmq_url: str, namespace: str) -> None:
    unknown = {"protocol": 1, "id": str(uuid.uuid4()), "attempt": 1, "node": "n", "status": "running",
               "at": utc_now()}

    async def send() -> None:
        async with ForeignClient(rabbitmq_url, namespace) as client:
            await client.publish("_reports", {"protocol": 1, "status": "done"})
            await client.publish("_reports", unknown)

    run(send())
    wait_for(lambda: len(app.broker.dead_letters()) == 2)
    reasons = sorted(headers["x-conveyor-reason"] for _, headers in app.broker.dead_letters())
    assert reasons[0].startswith("malformed report")
    assert reasons[1] == f"report for unknown task id {unknown['id']}"
    assert reports.applied == 0
