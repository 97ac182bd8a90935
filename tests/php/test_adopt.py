"""Adopting an existing queue: a plain php-amqplib producer keeps publishing raw strings to its
durable ``task_queue``; ``conveyor adopt`` turns every message into a tracked task that a PHP
worker runs once, redeliveries and repeats included, and leaves other queues alone."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator

import aiormq
import pytest

from conveyor.adopt import QueueAdopter, json_decoder, plain_decoder
from conveyor.amqp_side import Incoming
from conveyor.model import TaskFilter, TaskStatus
from tests.integration.conftest import REPO_ROOT, Cluster
from tests.php.conftest import Php, settle
from tests.processes import WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def queue_state(url: str, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) of an existing queue, by a passive declare."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        ok = await channel.queue_declare(queue, passive=True)
        return int(ok.message_count or 0), int(ok.consumer_count or 0)
    finally:
        await connection.close()


def start_adopter(cluster: Cluster, *args: str) -> WorkerProcess:
    log_path = cluster.tmp_path / f"adopt-{len(cluster.workers)}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "conveyor", "adopt", *args], cwd=REPO_ROOT, env=cluster.env(),
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    adopter = WorkerProcess("adopter", proc, log_path)
    cluster.workers.append(adopter)
    wait_for(lambda: "adopting task_queue" in adopter.output() or not adopter.alive(), 20, "the adopter to start")
    assert adopter.alive(), adopter.output()
    return adopter


def test_every_raw_message_of_an_adopted_queue_is_tracked_and_run_once(cluster: Cluster, php: Php) -> None:
    import asyncio

    php.run("legacy_producer.php", "task_queue", "0")  # the team's queue exists, declared their way
    php.run("legacy_producer.php", "other_queue", "5")  # and another queue Conveyor must not touch
    php.run("legacy_producer.php", "task_queue", "20")  # messages waiting before the adoption
    adopter = start_adopter(cluster, "task_queue", "--type", "legacy.task", "--to-queue", "legacy")
    php.worker("php-legacy", queues=("legacy",))
    php.run("legacy_producer.php", "task_queue", "10", "order")  # with message ids...
    php.run("legacy_producer.php", "task_queue", "10", "order")  # ...published twice: tracked once

    def all_done() -> bool:
        counts = cluster.service.counts()
        return counts.get("succeeded", 0) >= 30
    wait_for(all_done, 60, "30 adopted tasks to succeed", pause_s=0.2)
    settle(1.0)
    tasks = cluster.all_tasks()
    assert len(tasks) == 30 and all(t.status is TaskStatus.SUCCEEDED for t in tasks.values())
    bodies = Counter(t.params["body"] for t in tasks.values())
    assert bodies == Counter([f"Task {i}" for i in range(20)] + [f"Task {i}" for i in range(10)])
    assert all(t.queue == "legacy" and t.type == "legacy.task" for t in tasks.values())
    assert all(t.result == {"done": t.params["body"]} for t in tasks.values())
    runs = Counter(e.task_id for e in cluster.executions())
    assert set(runs) == set(tasks) and set(runs.values()) == {1}  # every task ran exactly once
    keyed = [t for t in tasks.values() if t.idempotency_key]
    assert len(keyed) == 10 and all(t.idempotency_key.startswith("adopt:task_queue:order-") for t in keyed)
    assert cluster.service.events(next(iter(keyed)).id)[0].detail == "adopted from queue task_queue"
    assert asyncio.run(queue_state(cluster.broker_url, "task_queue")) == (0, 1)  # drained; the adopter consumes
    assert asyncio.run(queue_state(cluster.broker_url, "other_queue")) == (5, 0)  # untouched
    adopter.signal(15)
    assert adopter.wait(15) == 0


@pytest.fixture
def adopter(cluster: Cluster) -> Iterator[QueueAdopter]:
    yield QueueAdopter(cluster.service, cluster.broker_url, "task_queue", plain_decoder("legacy.task"),
                       target_queue="legacy")


def test_a_redelivered_message_is_stored_once_and_published_again_if_still_queued(
        cluster: Cluster, adopter: QueueAdopter) -> None:
    cluster.service.broker.declare_queue("legacy")
    first = adopter.handle(Incoming(b"Task 1", message_id="m-1"))
    again = adopter.handle(Incoming(b"Task 1", message_id="m-1", redelivered=True))
    assert (first.action, again.action) == ("ack", "ack")
    tasks = cluster.service.query(TaskFilter()).tasks
    assert len(tasks) == 1 and tasks[0].id == uuid.uuid5(uuid.UUID("6f1c4a52-7d1e-4c55-9b86-0e3a3c1f4a10"),
                                                        "task_queue\x00m-1")
    assert adopter.adopted == 1
    as_uuid = str(uuid.uuid4())
    adopter.handle(Incoming(b"Task 2", message_id=as_uuid))
    assert cluster.service.get(uuid.UUID(as_uuid)).params == {"body": "Task 2"}


def test_messages_the_decoder_refuses_are_dead_lettered_with_the_reason(
        cluster: Cluster, adopter: QueueAdopter) -> None:
    refused = adopter.handle(Incoming(b"\xff\xfe not text"))
    assert refused.action == "ack" and len(refused.publish) == 1
    assert "not UTF-8" in refused.publish[0].headers["x-conveyor-reason"]  # type: ignore[index]
    assert refused.publish[0].routing_key == "conveyor.dead"
    decoder = json_decoder(params_field="args")
    assert decoder(Incoming(b'{"type": "mail.send", "args": {"to": "x"}}')).params == {"to": "x"}
    for body in (b"[1]", b'{"args": {}}', b'{"type": "t", "args": 5}', b"NaN"):
        with pytest.raises(ValueError):
            decoder(Incoming(body))
    nul = QueueAdopter(cluster.service, cluster.broker_url, "task_queue", plain_decoder("t"))
    assert "NUL" in nul.handle(Incoming(b"a\x00b")).publish[0].headers["x-conveyor-reason"]  # type: ignore[index]
    assert cluster.service.counts() == {} or sum(cluster.service.counts().values()) == 0


def test_an_adopter_killed_mid_stream_leaves_no_message_untracked_or_doubled(cluster: Cluster, php: Php) -> None:
    php.run("legacy_producer.php", "task_queue", "300", "job")
    first = start_adopter(cluster, "task_queue", "--type", "legacy.task", "--to-queue", "legacy")
    wait_for(lambda: sum(cluster.service.counts().values()) >= 30, 30, "some messages adopted", pause_s=0.02)
    first.kill_all()  # SIGKILL: its unacked messages go back to task_queue and come again
    start_adopter(cluster, "task_queue", "--type", "legacy.task", "--to-queue", "legacy")
    php.worker("php-legacy", queues=("legacy",), concurrency=2)
    wait_for(lambda: cluster.service.counts().get("succeeded", 0) >= 300, 90, "300 tasks to succeed", pause_s=0.25)
    settle(1.0)
    tasks = cluster.all_tasks()
    assert len(tasks) == 300
    assert sorted(t.params["body"] for t in tasks.values()) == sorted(f"Task {i}" for i in range(300))
    runs = Counter(e.task_id for e in cluster.executions())
    assert set(runs) == set(tasks) and set(runs.values()) == {1}
