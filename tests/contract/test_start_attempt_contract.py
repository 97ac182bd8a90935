"""Store.start_attempt: the worker's one-round-trip claim, on every store."""

from __future__ import annotations

import time

from conveyor.model import Task, TaskStatus
from conveyor.store.base import Store


def test_a_queued_task_starts_with_its_attempt_counted_and_recorded(store: Store) -> None:
    task, _ = store.create(Task(type="t"))
    at = time.time()
    started = store.start_attempt(task.id, "node-1", at=at, lease_until=at + 30)
    assert started is not None
    assert (started.status, started.node, started.attempts) == (TaskStatus.RUNNING, "node-1", 1)
    assert started.lease_until == at + 30 and started.started_at == at
    assert started == store.get(task.id)
    last = store.events(task.id)[-1]
    assert (last.from_status, last.to_status, last.node, last.detail) == (
        TaskStatus.QUEUED, TaskStatus.RUNNING, "node-1", "attempt 1")


def test_a_running_or_finished_task_is_left_alone(store: Store) -> None:
    task, _ = store.create(Task(type="t"))
    at = time.time()
    assert store.start_attempt(task.id, "a", at=at, lease_until=at + 30) is not None
    assert store.start_attempt(task.id, "b", at=at, lease_until=at + 30) is None
    running = store.get(task.id)
    store.update(running, TaskStatus.SUCCEEDED, result=1)
    assert store.start_attempt(task.id, "b", at=at, lease_until=at + 30) is None
    assert store.get(task.id).status is TaskStatus.SUCCEEDED


def test_a_retrying_task_starts_only_once_its_eta_is_reached(store: Store) -> None:
    at = time.time()
    task, _ = store.create(Task(type="t", status=TaskStatus.SCHEDULED, eta=at + 60))
    assert store.start_attempt(task.id, "a", at=at, lease_until=at + 30) is None
    started = store.start_attempt(task.id, "a", at=at + 61, lease_until=at + 91)
    assert started is not None and started.status is TaskStatus.RUNNING
    assert store.events(task.id)[-1].from_status is TaskStatus.SCHEDULED


def test_an_unknown_task_id_starts_nothing(store: Store) -> None:
    at = time.time()
    assert store.start_attempt(Task(type="t").id, "a", at=at, lease_until=at + 30) is None


def test_renewing_leases_returns_only_the_tasks_still_owned(store: Store) -> None:
    at = time.time()
    mine, _ = store.create(Task(type="t"))
    cancelled, _ = store.create(Task(type="t"))
    theirs, _ = store.create(Task(type="t"))
    store.start_attempt(mine.id, "me", at=at, lease_until=at + 30)
    running = store.start_attempt(cancelled.id, "me", at=at, lease_until=at + 30)
    assert running is not None
    store.update(running, TaskStatus.CANCELLED)
    store.start_attempt(theirs.id, "other", at=at, lease_until=at + 30)
    renewed = store.renew_leases([mine.id, cancelled.id, theirs.id], "me", at + 60)
    assert renewed == {mine.id}
    assert store.get(mine.id).lease_until == at + 60
    assert store.get(theirs.id).lease_until == at + 30
    assert store.renew_leases([], "me", at + 60) == set()
