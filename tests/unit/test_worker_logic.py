"""Claim decisions (Run / Drop / Later), take-over and recovery, against a real SqliteStore.

A broker delivers at least once; ``claim`` decides from the stored task which delivery runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import message
from conveyor.broker.sqlite import SqliteBroker
from conveyor.message import Message
from conveyor.model import Task, TaskStatus, now
from conveyor.publisher import publish_tasks
from conveyor.recovery import recover_expired, take_over
from conveyor.store.sqlite import SqliteStore
from conveyor.worker.claim import Drop, Later, Run, claim

LEASE_S = 10.0
MAX_CRASHES = 3


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/conveyor.db"


@pytest.fixture
def store(url: str) -> Iterator[SqliteStore]:
    s = SqliteStore(url)
    yield s
    s.close()


def submitted(store: SqliteStore, **fields: Any) -> Task:
    task, created = store.create(Task(type="t", params={"x": 1}, queued_at=now(), **fields), detail="submitted")
    assert created
    return task


def running_on(store: SqliteStore, node: str, *, lease_in_s: float, crashes: int = 0) -> Task:
    task = submitted(store)
    return store.update(task, TaskStatus.RUNNING, node=node, attempts=1, started_at=now(),
                        lease_until=now() + lease_in_s, crashes=crashes)


def claim_as(store: SqliteStore, task: Task, node: str = "me") -> Run | Drop | Later:
    return claim(store, Message.for_task(task), node, lease_s=LEASE_S, max_crashes=MAX_CRASHES)


def details(store: SqliteStore, task: Task) -> list[str | None]:
    return [e.detail for e in store.events(task.id)]


def test_a_queued_task_is_run_by_the_claiming_node_with_a_lease(store: SqliteStore) -> None:
    task = submitted(store)

    outcome = claim_as(store, task)

    assert isinstance(outcome, Run)
    started = outcome.task
    assert (started.status, started.node, started.attempts) == (TaskStatus.RUNNING, "me", 1)
    assert started.lease_until is not None and abs(started.lease_until - (now() + LEASE_S)) < 2.0
    assert store.get(task.id) == started
    assert details(store, task) == ["submitted", "attempt 1"]


@pytest.mark.parametrize("final", [TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED])
def test_a_finished_task_is_dropped(store: SqliteStore, final: TaskStatus) -> None:
    task = running_on(store, "other", lease_in_s=LEASE_S)
    task = store.update(task, final, finished_at=now(), lease_until=None)

    outcome = claim_as(store, task)

    assert outcome == Drop(f"task already {final.value}")
    assert store.get(task.id).status is final


def test_a_task_running_under_a_live_lease_is_looked_at_again_after_the_lease(store: SqliteStore) -> None:
    task = running_on(store, "other", lease_in_s=5.0)

    outcome = claim_as(store, task)

    assert isinstance(outcome, Later)
    assert 5.0 < outcome.delay_s <= 5.5 + 0.1
    assert "other" in outcome.reason
    assert store.get(task.id) == task, "nothing written"


def test_the_same_delivery_claimed_twice_runs_once(store: SqliteStore) -> None:
    task = submitted(store)

    first, second = claim_as(store, task, "a"), claim_as(store, task, "b")

    assert isinstance(first, Run) and isinstance(second, Later)
    assert store.get(task.id).node == "a"


def test_an_expired_lease_is_taken_over_and_the_crash_counted(store: SqliteStore) -> None:
    task = running_on(store, "dead-node", lease_in_s=-1.0)

    outcome = claim_as(store, task, "rescuer")

    assert isinstance(outcome, Run)
    assert (outcome.task.node, outcome.task.attempts, outcome.task.crashes) == ("rescuer", 2, 1)
    events = store.events(task.id)
    assert [e.to_status.value for e in events] == ["queued", "running", "queued", "running"]
    assert events[2].detail == "lease of node dead-node expired (crash 1 of 3)"


def test_the_third_crash_fails_the_task_as_crashed(store: SqliteStore) -> None:
    task = running_on(store, "dead-node", lease_in_s=-1.0, crashes=MAX_CRASHES - 1)

    outcome = claim_as(store, task, "rescuer")

    assert outcome == Drop("failed as crashed")
    failed = store.get(task.id)
    assert (failed.status, failed.crashes, failed.lease_until) == (TaskStatus.FAILED, 3, None)
    assert failed.error is not None and failed.error["type"] == "crashed"
    assert failed.finished_at is not None
    assert details(store, task)[-1] == "lease of node dead-node expired (crash 3 of 3)"


def test_a_retrying_task_not_yet_due_is_looked_at_again_when_due(store: SqliteStore) -> None:
    task = running_on(store, "me", lease_in_s=LEASE_S)
    task = store.update(task, TaskStatus.RETRYING, eta=now() + 3.0, lease_until=None)

    outcome = claim_as(store, task)

    assert isinstance(outcome, Later)
    assert 2.5 < outcome.delay_s <= 3.0
    assert store.get(task.id).status is TaskStatus.RETRYING


def test_a_retrying_task_that_is_due_runs_its_next_attempt(store: SqliteStore) -> None:
    task = running_on(store, "me", lease_in_s=LEASE_S)
    task = store.update(task, TaskStatus.RETRYING, eta=now() - 0.1, lease_until=None)

    outcome = claim_as(store, task)

    assert isinstance(outcome, Run) and outcome.task.attempts == 2


def test_a_scheduled_task_not_yet_due_waits(store: SqliteStore) -> None:
    task = submitted(store, status=TaskStatus.SCHEDULED, eta=now() + 60.0)

    outcome = claim_as(store, task)

    assert isinstance(outcome, Later) and outcome.delay_s > 59.0


def test_a_message_for_an_unknown_task_id_is_adopted_and_run(store: SqliteStore) -> None:
    msg = Message(id=uuid.uuid4(), type="from.elsewhere", params={"k": "v"}, priority=4, max_attempts=2)

    outcome = claim(store, msg, "me", lease_s=LEASE_S, max_crashes=MAX_CRASHES)

    assert isinstance(outcome, Run)
    adopted = store.get(msg.id)
    assert (adopted.type, adopted.params, adopted.priority, adopted.max_attempts) == (
        "from.elsewhere", {"k": "v"}, 4, 2)
    assert adopted.status is TaskStatus.RUNNING
    assert details(store, adopted) == ["adopted from a broker message", "attempt 1"]


def test_take_over_puts_the_task_back_in_its_queue_below_the_crash_limit(store: SqliteStore) -> None:
    task = running_on(store, "dead-node", lease_in_s=-1.0)

    back = take_over(store, task, max_crashes=MAX_CRASHES)

    assert (back.status, back.crashes, back.lease_until) == (TaskStatus.QUEUED, 1, None)


def test_recovery_republishes_tasks_whose_lease_expired_a_full_lease_ago(store: SqliteStore, url: str) -> None:
    broker = SqliteBroker(url)
    try:
        stale = running_on(store, "dead-node", lease_in_s=-2 * LEASE_S)
        fresh = running_on(store, "slow-node", lease_in_s=-1.0)  # may still be renewing: not yet
        live = running_on(store, "busy-node", lease_in_s=LEASE_S)

        recovered = recover_expired(store, lambda tasks: publish_tasks(broker, tasks), lease_s=LEASE_S,
                                    max_crashes=MAX_CRASHES)

        assert recovered == 1
        assert store.get(stale.id).status is TaskStatus.QUEUED
        assert store.get(fresh.id).status is TaskStatus.RUNNING
        assert store.get(live.id).status is TaskStatus.RUNNING
        consumer = broker.consume([stale.queue], prefetch=1)
        delivery = consumer.get(timeout_s=1.0)
        assert delivery is not None
        assert message.decode(delivery.body).id == stale.id
        delivery.ack()
        consumer.close()
    finally:
        broker.close()


def test_a_node_asking_again_for_its_own_claim_whose_answer_was_lost_runs_it(store: SqliteStore) -> None:
    task = submitted(store)
    first = claim_as(store, task, "me")  # committed, but say the answer never reached the worker
    assert isinstance(first, Run)

    again = claim(store, Message.for_task(task), "me", lease_s=LEASE_S, max_crashes=MAX_CRASHES)

    assert again == Run(first.task)
    assert details(store, task) == ["submitted", "attempt 1"], "nothing written twice"


def test_a_stale_copy_of_an_attempt_that_already_ran_is_dropped(store: SqliteStore) -> None:
    task = running_on(store, "me", lease_in_s=LEASE_S)
    retrying = store.update(task, TaskStatus.RETRYING, eta=now() - 1, lease_until=None)
    first_copy = Message.for_task(task.replace(attempts=0))  # attempt 1's message, redelivered

    stale = claim(store, first_copy, "other", lease_s=LEASE_S, max_crashes=MAX_CRASHES)

    assert isinstance(stale, Drop) and "superseded" in stale.reason
    assert store.get(task.id) == retrying
