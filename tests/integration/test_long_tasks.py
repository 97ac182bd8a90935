"""Tasks that run far longer than RabbitMQ's consumer_timeout: the worker acks the delivery
early (after CONVEYOR_ACK_HANDOFF_S) and from then the store lease alone guards the task, so
RabbitMQ neither closes the channel nor delivers the task twice; if the worker dies after the
hand-off, the reaper (conveyor.recovery) runs the task again.

RabbitMQ 3.10 reads consumer_timeout when a channel opens, and checks it on the channel's tick
(channel_tick_interval, 60 s by default, re-read at every tick). So the tick is lowered to 1 s
for the whole test, and consumer_timeout to 5 s only while the worker opens its consumer
channel: the worker's channel keeps 5 s, every other channel on the server the usual value.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from conveyor.model import TaskStatus
from conveyor.service import SubmitRequest
from tests.integration.conftest import LEASE_S, Cluster, WorkerProcess, rabbit_env, rabbitmqctl, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CONSUMER_TIMEOUT_MS = 5000
HANDOFF_S = 2.0
# What a worker logging at DEBUG shows when RabbitMQ closes its channel (the reason itself,
# PRECONDITION_FAILED, is only in the server log; both are checked).
CHANNEL_CLOSED_MARKERS = ("Channel.Close", "Start reopening channel", "PRECONDITION_FAILED")


@pytest.fixture
def fast_channel_ticks() -> Iterator[None]:
    with rabbit_env("channel_tick_interval", 1000):
        yield


def start_with_short_consumer_timeout(cluster: Cluster, node_id: str, handoff_s: float) -> WorkerProcess:
    """A worker whose consumer channel RabbitMQ closes after 5 s holding an unacked delivery."""
    with rabbit_env("consumer_timeout", CONSUMER_TIMEOUT_MS):
        return cluster.start(node_id, concurrency=2, extra_env={
            "CONVEYOR_ACK_HANDOFF_S": str(handoff_s), "CONVEYOR_LOG_LEVEL": "DEBUG"})


def consumer_timeouts(vhost: str) -> list[str]:
    """Consumer timeouts the RabbitMQ server logged for channels of ``vhost``."""
    lines = Path(rabbitmqctl_diagnostics("log_location").strip()).read_text(errors="replace").splitlines()
    return [f"{a}\n{b}" for a, b in pairwise(lines)
            if f"vhost: '{vhost}'" in a and "Channel error" in a and "acknowledgement" in b and "timed out" in b]


def channel_closures(worker: WorkerProcess) -> list[str]:
    return [line for line in worker.output().splitlines() if any(m in line for m in CHANNEL_CLOSED_MARKERS)]


def queue_messages(cluster: Cluster) -> dict[str, int]:
    """Messages (ready + unacked) per queue of the test's vhost."""
    listing = rabbitmqctl("list_queues", "-q", "-p", vhost_of(cluster), "--formatter", "json", "name", "messages")
    rows = json.loads(listing)
    return {row["name"]: int(row["messages"]) for row in rows}


def vhost_of(cluster: Cluster) -> str:
    return unquote(urlsplit(cluster.broker_url).path.lstrip("/"))


def rabbitmqctl_diagnostics(*args: str) -> str:
    done = subprocess.run(["rabbitmq-diagnostics", "-q", *args], capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout


def submit_long(cluster: Cluster, seconds: float, rerun_seconds: float | None = None) -> uuid.UUID:
    params = {"seconds": seconds} if rerun_seconds is None else {"seconds": seconds, "rerun_seconds": rerun_seconds}
    task, _ = cluster.service.submit(SubmitRequest(type="count.long", params=params))
    return task.id


def test_a_20_s_task_outlives_a_5_s_consumer_timeout_and_runs_exactly_once(
        cluster: Cluster, fast_channel_ticks: None) -> None:
    worker = start_with_short_consumer_timeout(cluster, "long-a", handoff_s=HANDOFF_S)
    task_id = submit_long(cluster, seconds=20)

    wait_for(lambda: "delivery acked" in worker.output(), 15, "the hand-off of the long task")
    assert queue_messages(cluster).get("conveyor.default") == 0  # acked: RabbitMQ no longer tracks it
    task = wait_for(lambda: (t := cluster.service.get(task_id)).status.is_final and t, 40, "the task to finish")

    assert task.status is TaskStatus.SUCCEEDED
    assert task.attempts == 1
    assert [e.node for e in cluster.executions()] == ["long-a"]  # ran exactly once
    assert not channel_closures(worker), "RabbitMQ closed the worker's channel"
    assert not consumer_timeouts(vhost_of(cluster))
    assert worker.alive()


def test_without_the_hand_off_rabbitmq_closes_the_channel_holding_a_long_task(
        cluster: Cluster, fast_channel_ticks: None) -> None:
    """The control: proves the lowered consumer_timeout really applies to the worker's channel."""
    worker = start_with_short_consumer_timeout(cluster, "long-b", handoff_s=60)
    task_id = submit_long(cluster, seconds=9)

    wait_for(lambda: channel_closures(worker), 20, "RabbitMQ to enforce the consumer timeout")
    task = wait_for(lambda: (t := cluster.service.get(task_id)).status.is_final and t, 30, "the task to finish")

    assert consumer_timeouts(vhost_of(cluster))  # the server says why it closed the channel

    assert task.status is TaskStatus.SUCCEEDED  # the store lease still kept the redelivery from running it twice
    assert len(cluster.executions()) == 1


def test_a_worker_killed_after_the_hand_off_has_its_task_rerun_by_the_reaper(cluster: Cluster) -> None:
    first = cluster.start("long-first", concurrency=2, extra_env={"CONVEYOR_ACK_HANDOFF_S": str(HANDOFF_S)})
    task_id = submit_long(cluster, seconds=20, rerun_seconds=1)
    wait_for(lambda: "delivery acked" in first.output(), 15, "the hand-off of the long task")
    assert queue_messages(cluster).get("conveyor.default") == 0  # only the store knows the task now

    second = cluster.start("long-second", concurrency=2)
    first.kill_all()
    killed_at = time.time()
    task = wait_for(lambda: (t := cluster.service.get(task_id)).status.is_final and t, 30, "the rerun to finish")

    assert task.status is TaskStatus.SUCCEEDED
    assert task.node == "long-second"
    assert task.crashes == 1
    assert [e.node for e in cluster.executions()] == ["long-first", "long-second"]
    timeline = cluster.service.events(task.id)
    takeover = next(e for e in timeline if e.detail and "lease of node long-first expired" in e.detail)
    assert takeover.to_status is TaskStatus.QUEUED
    assert takeover.at - killed_at >= LEASE_S  # the reaper waits a full lease past expiry
    assert [e.to_status for e in timeline][-3:] == [TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.SUCCEEDED]
    assert "recovered 1 task(s) from dead nodes" in "".join(w.output() for w in (first, second))
