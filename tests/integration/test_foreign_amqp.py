"""The center answers foreign workers over AMQP: claims and reports published to ``_reports`` with
``reply_to`` (RabbitMQ direct reply-to) get their answer, on the real RabbitMQ and PostgreSQL. The
foreign side is aio-pika and json only, written from docs/protocol.md."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import aiormq
import aiormq.abc
import pytest
from pamqp.commands import Basic

from conveyor.broker.rabbitmq import RabbitmqBroker
from conveyor.config import Settings
from conveyor.model import TaskStatus
from conveyor.reports import open_report_consumer
from conveyor.reports_amqp import AmqpReportListener
from conveyor.service import SubmitRequest, TaskService
from conveyor.store.postgres import PostgresStore
from tests.conformance.kit import runner

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPLY_TO = "amq.rabbitmq.reply-to"
SETTINGS = Settings(lease_s=6.0, heartbeat_s=1.5)


@pytest.fixture
def service(vhost_url: str, postgres_schema_url: str) -> Iterator[TaskService]:
    service = TaskService(PostgresStore(postgres_schema_url), RabbitmqBroker(vhost_url))
    yield service
    service.broker.close()
    service.store.close()


@pytest.fixture
def listener(service: TaskService, vhost_url: str) -> Iterator[AmqpReportListener]:
    consumer = open_report_consumer(service, Settings(broker_url=vhost_url, lease_s=6.0, heartbeat_s=1.5))
    assert isinstance(consumer, AmqpReportListener)
    consumer.start()
    yield consumer
    consumer.stop()


async def ask(url: str, bodies: list[dict[str, Any] | bytes], *, reply_to: str = REPLY_TO,
              timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Publish each body to _reports with reply_to and a correlation id (confirmed), and collect
    the answers, in order. Direct reply-to: consume the pseudo-queue no-ack on the same channel."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        answers: dict[str, dict[str, Any]] = {}
        done = asyncio.Event()

        async def on_answer(message: aiormq.abc.DeliveredMessage) -> None:
            answers[message.header.properties.correlation_id or ""] = json.loads(message.body)
            if len(answers) == len(bodies):
                done.set()

        await channel.basic_consume(REPLY_TO, on_answer, no_ack=True)
        ids = []
        for body in bodies:
            correlation_id = uuid.uuid4().hex
            ids.append(correlation_id)
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            await channel.basic_publish(raw, exchange="conveyor", routing_key="_reports", properties=Basic.Properties(
                content_type="application/json", delivery_mode=2, reply_to=reply_to, correlation_id=correlation_id))
        if reply_to == REPLY_TO:
            await asyncio.wait_for(done.wait(), timeout_s)
        return [answers[i] for i in ids if i in answers]
    finally:
        await connection.close()


def claim_body(task_id: str, attempt: int, node: str, **extra: Any) -> dict[str, Any]:
    return {"protocol": 1, "kind": "claim", "id": task_id, "attempt": attempt, "node": node, **extra}


def report_body(task_id: str, attempt: int, node: str, status: str, **extra: Any) -> dict[str, Any]:
    return {"protocol": 1, "id": task_id, "attempt": attempt, "node": node, "status": status,
            "at": "2030-01-01T00:00:00Z", **extra}


def test_claims_over_amqp_get_run_later_and_drop(
        service: TaskService, listener: AmqpReportListener, vhost_url: str) -> None:
    task, _ = service.submit(SubmitRequest(type="php.job", params={}, queue="php"))
    tid = str(task.id)
    first, second = asyncio.run(ask(vhost_url, [claim_body(tid, 1, "php-a"), claim_body(tid, 1, "php-b")]))
    assert (first["kind"], first["decision"], first["attempt"], first["lease_s"], first["renew_s"],
            first["heartbeat_s"]) == ("claim", "run", 1, 6.0, 2.0, 1.5)
    assert second["decision"] == "later" and second["delay_s"] > 5.0
    assert service.get(task.id).node == "php-a"
    done, = asyncio.run(ask(vhost_url, [report_body(tid, 1, "php-a", "succeeded", result=7)]))
    assert (done["kind"], done["applied"], done["stop"], done["task_status"]) == ("report", True, False, "succeeded")
    stale, = asyncio.run(ask(vhost_url, [claim_body(tid, 1, "php-b")]))
    assert (stale["decision"], stale["reason"]) == ("drop", "already succeeded")
    assert service.get(task.id).result == 7


def test_a_claim_carrying_the_message_adopts_a_task_published_straight_to_rabbitmq(
        service: TaskService, listener: AmqpReportListener, vhost_url: str) -> None:
    tid = runner.fresh_id()
    answer, = asyncio.run(ask(vhost_url, [claim_body(tid, 1, "php-a", queue="conformance",
                                                     message=runner.claim_message(tid, 1))]))
    assert answer["decision"] == "run"
    adopted = service.get(uuid.UUID(tid))
    assert (adopted.status, adopted.node, adopted.queue) == (TaskStatus.RUNNING, "php-a", "conformance")
    assert service.events(adopted.id)[0].detail == "adopted from a broker message (claim)"


def test_renewals_learn_of_a_cancel_and_superseded_reports_are_answered(
        service: TaskService, listener: AmqpReportListener, vhost_url: str) -> None:
    task, _ = service.submit(SubmitRequest(type="php.job", params={}, queue="php"))
    tid = str(task.id)
    asyncio.run(ask(vhost_url, [claim_body(tid, 1, "php-a")]))
    renewed, = asyncio.run(ask(vhost_url, [report_body(tid, 1, "php-a", "running")]))
    assert (renewed["applied"], renewed["stop"], renewed["reason"]) == (True, False, "lease renewed")
    service.cancel(task.id)
    renewal, stale = asyncio.run(ask(vhost_url, [report_body(tid, 1, "php-a", "running"),
                                                 report_body(tid, 0 + 1, "php-b", "succeeded", result=1)]))
    assert (renewal["stop"], renewal["reason"]) == (True, "ignored: task already cancelled")
    assert stale["stop"] is True and service.get(task.id).status is TaskStatus.CANCELLED


def test_heartbeats_with_reply_to_get_the_terms_and_list_the_node(
        service: TaskService, listener: AmqpReportListener, vhost_url: str) -> None:
    beat = {"protocol": 1, "kind": "heartbeat", "node": "php-9", "queues": ["php"], "concurrency": 2,
            "in_flight": 0, "done": 0}
    answer, = asyncio.run(ask(vhost_url, [beat]))
    assert (answer["kind"], answer["applied"], answer["heartbeat_s"]) == ("heartbeat", True, 1.5)
    assert [n.id for n in service.nodes()] == ["php-9"]


def test_malformed_bodies_are_answered_and_dead_lettered_and_a_bogus_reply_to_does_not_wedge_the_listener(
        service: TaskService, listener: AmqpReportListener, vhost_url: str) -> None:
    malformed = claim_body(str(uuid.uuid4()), 0, "php-a")
    answer, = asyncio.run(ask(vhost_url, [malformed]))
    assert (answer["kind"], answer["stop"]) == ("error", True) and "attempt" in answer["reason"]
    unknown = report_body(str(uuid.uuid4()), 1, "php-a", "running")
    asyncio.run(ask(vhost_url, [unknown], reply_to="amq.rabbitmq.reply-to.bogus"))
    asyncio.run(ask(vhost_url, [report_body(str(uuid.uuid4()), 1, "php-a", "running")], reply_to="no-such-queue"))
    task, _ = service.submit(SubmitRequest(type="php.job", params={}, queue="php"))
    still, = asyncio.run(ask(vhost_url, [claim_body(str(task.id), 1, "php-a")]))
    assert still["decision"] == "run"
    reasons = sorted(h["x-conveyor-reason"] for _, h in service.broker.dead_letters())
    assert len(reasons) == 3
    assert reasons[0].startswith("malformed report: invalid claim") and "attempt" in reasons[0]
    assert all(r.startswith("report for unknown task id") for r in reasons[1:])
