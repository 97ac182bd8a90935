"""The Store contract: behaviour every Store implementation shows, seen through the port only."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import pytest

from conveyor.errors import ConcurrentUpdate, InvalidTransition, TaskNotFound
from conveyor.model import NodeInfo, Task, TaskFilter, TaskStatus
from conveyor.store.base import Store

S = TaskStatus


def _task(**fields: Any) -> Task:
    return Task(**{"type": "email.send", "params": {"to": "a@example.com"}, **fields})


def _run(store: Store, task: Task, node: str = "node-1", lease_until: float | None = None) -> Task:
    now = time.time()
    return store.update(task, S.RUNNING, node=node, attempts=task.attempts + 1, started_at=now,
                        lease_until=now + 30 if lease_until is None else lease_until)


def test_created_task_reads_back_equal(store: Store) -> None:
    task = _task(params={"n": 1, "nested": {"list": [1, "two", None]}}, priority=7, timeout=12.5,
                 eta=time.time() + 60, status=S.SCHEDULED, max_attempts=5)

    created, inserted = store.create(task)

    assert inserted
    assert created == task
    assert store.get(task.id) == task


def test_unknown_id_raises_task_not_found(store: Store) -> None:
    with pytest.raises(TaskNotFound):
        store.get(uuid.uuid4())


def test_idempotency_key_returns_the_first_task(store: Store) -> None:
    first, inserted_first = store.create(_task(idempotency_key="order-42"))

    second, inserted_second = store.create(_task(idempotency_key="order-42", params={"other": True}))

    assert inserted_first and not inserted_second
    assert second == first
    assert store.query(TaskFilter()).tasks == [first]


def test_tasks_without_idempotency_key_never_conflict(store: Store) -> None:
    store.create(_task())
    store.create(_task())

    assert len(store.query(TaskFilter()).tasks) == 2


def test_update_writes_changes_and_bumps_version(store: Store) -> None:
    task, _ = store.create(_task())

    running = _run(store, task)
    done = store.update(running, S.SUCCEEDED, node="node-1", result={"ok": [1, 2]}, finished_at=time.time())

    assert (running.version, done.version) == (task.version + 1, task.version + 2)
    assert done.status is S.SUCCEEDED and done.result == {"ok": [1, 2]} and done.node == "node-1"
    assert store.get(task.id) == done


def test_update_with_stale_version_raises_concurrent_update(store: Store) -> None:
    task, _ = store.create(_task())
    _run(store, task, node="node-1")

    with pytest.raises(ConcurrentUpdate):
        _run(store, task, node="node-2")  # same starting version: lost the race

    assert store.get(task.id).node == "node-1"


def test_update_of_unknown_task_raises_task_not_found(store: Store) -> None:
    with pytest.raises(TaskNotFound):
        store.update(_task(), S.RUNNING)


def test_forbidden_transition_raises_and_writes_nothing(store: Store) -> None:
    task, _ = store.create(_task())
    done = store.update(_run(store, task), S.SUCCEEDED)

    with pytest.raises(InvalidTransition):
        store.update(done, S.RUNNING)

    assert store.get(task.id) == done


def test_update_without_status_changes_fields_and_records_no_event(store: Store) -> None:
    task, _ = store.create(_task())

    changed = store.update(task, None, params={"to": "b@example.com"}, eta=123.0)

    assert store.get(task.id) == changed
    assert changed.status is S.QUEUED and changed.params == {"to": "b@example.com"}
    assert len(store.events(task.id)) == 1


def test_events_record_the_timeline_oldest_first(store: Store) -> None:
    task, _ = store.create(_task(), detail="submitted")
    running = _run(store, task, node="node-1")
    retrying = store.update(running, S.RETRYING, node="node-1", detail="boom")
    store.update(retrying, S.QUEUED)

    events = store.events(task.id)

    assert [(e.from_status, e.to_status) for e in events] == [
        (None, S.QUEUED), (S.QUEUED, S.RUNNING), (S.RUNNING, S.RETRYING), (S.RETRYING, S.QUEUED),
    ]
    assert events[0].detail == "submitted" and events[2].detail == "boom" and events[2].node == "node-1"
    assert all(e.task_id == task.id for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)


def test_query_pages_newest_first_without_duplicates_or_gaps(store: Store) -> None:
    ids = [store.create(_task(type=f"t{i % 3}"))[0].id for i in range(23)]

    seen: list[uuid.UUID] = []
    cursor: uuid.UUID | None = None
    for _ in range(10):
        page = store.query(TaskFilter(), limit=10, cursor=cursor)
        seen += [t.id for t in page.tasks]
        cursor = page.next_cursor
        if cursor is None:
            break

    assert seen == sorted(ids, reverse=True)


def test_query_filters_by_status_type_queue_and_node(store: Store) -> None:
    a, _ = store.create(_task(type="a", queue="q1"))
    b, _ = store.create(_task(type="b", queue="q2"))
    c, _ = store.create(_task(type="a", queue="q2"))
    _run(store, c, node="node-9")

    def ids(f: TaskFilter) -> set[uuid.UUID]:
        return {t.id for t in store.query(f).tasks}

    assert ids(TaskFilter(type="a")) == {a.id, c.id}
    assert ids(TaskFilter(queue="q2")) == {b.id, c.id}
    assert ids(TaskFilter(status=S.RUNNING)) == {c.id}
    assert ids(TaskFilter(node="node-9")) == {c.id}
    assert ids(TaskFilter(type="a", queue="q2", status=S.QUEUED)) == set()


def test_filtered_query_pages_across_the_whole_result(store: Store) -> None:
    wanted = [store.create(_task(type="want" if i % 2 else "skip"))[0].id for i in range(15)]
    wanted = [i for n, i in enumerate(wanted) if n % 2]

    first = store.query(TaskFilter(type="want"), limit=3)
    rest = store.query(TaskFilter(type="want"), limit=3, cursor=first.next_cursor)
    last = store.query(TaskFilter(type="want"), limit=100, cursor=rest.next_cursor)

    assert [t.id for t in first.tasks + rest.tasks + last.tasks] == sorted(wanted, reverse=True)
    assert last.next_cursor is None


def test_count_by_status_counts_each_status(store: Store) -> None:
    task, _ = store.create(_task(queue="q1"))
    store.create(_task(queue="q1"))
    store.create(_task(queue="q2", status=S.SCHEDULED))
    _run(store, task)

    everywhere = store.count_by_status()
    in_q1 = store.count_by_status(queue="q1")

    assert {k: v for k, v in everywhere.items() if v} == {"queued": 1, "running": 1, "scheduled": 1}
    assert {k: v for k, v in in_q1.items() if v} == {"queued": 1, "running": 1}


def test_queue_stats_count_statuses_and_recent_finishes_per_queue(store: Store) -> None:
    now = time.time()
    recent = _run(store, store.create(_task(queue="q1"))[0])
    store.update(recent, S.SUCCEEDED, finished_at=now)
    old = _run(store, store.create(_task(queue="q1"))[0])
    store.update(old, S.FAILED, finished_at=now - 600)
    store.create(_task(queue="q2"))

    stats = store.queue_stats(since=now - 60)

    assert set(stats) == {"q1", "q2"}
    assert {k: v for k, v in stats["q1"].items() if v} == {"succeeded": 1, "failed": 1, "finished_since": 1}
    assert {k: v for k, v in stats["q2"].items() if v} == {"queued": 1}
    assert stats["q2"].get("finished_since", 0) == 0


def test_expired_leases_lists_running_tasks_past_their_lease_on_the_stores_clock(store: Store) -> None:
    now = store.now()
    stale = _run(store, store.create(_task())[0], lease_until=now - 5)
    _run(store, store.create(_task())[0], lease_until=now + 60)
    store.create(_task(lease_until=now - 5))  # queued: not leased, whatever the column says

    assert [t.id for t in store.expired_leases(0.0)] == [stale.id]
    assert store.expired_leases(10.0) == [], "expired for 5 s only"


def test_renew_leases_extends_only_the_owners_running_attempt(store: Store) -> None:
    now = store.now()
    mine = _run(store, store.create(_task())[0], node="node-1", lease_until=now - 1)
    theirs = _run(store, store.create(_task())[0], node="node-2", lease_until=now - 1)

    renewed = store.renew_leases([(mine.id, mine.attempts), (theirs.id, theirs.attempts)], "node-1", 60.0)
    stale = store.renew_leases([(mine.id, mine.attempts + 1)], "node-1", 60.0)

    assert renewed == {mine.id} and stale == set()
    lease = store.get(mine.id).lease_until
    assert lease is not None and now + 59 < lease < store.now() + 61
    assert store.get(theirs.id).lease_until == now - 1
    assert [t.id for t in store.expired_leases(0.0)] == [theirs.id]


def test_a_renewed_lease_makes_a_take_over_read_before_it_fail(store: Store) -> None:
    running = _run(store, store.create(_task())[0], node="node-1", lease_until=store.now() - 1)
    seen_expired = store.get(running.id)

    store.renew_leases([(running.id, running.attempts)], "node-1", 60.0)  # the owner was alive after all

    with pytest.raises(ConcurrentUpdate):
        store.update(seen_expired, S.QUEUED, detail="take over")


def test_upsert_node_registers_then_refreshes(store: Store) -> None:
    node = NodeInfo(id="node-1", host="h1", pid=123, queues=("default", "mail"), concurrency=4,
                    started_at=1000.0, last_heartbeat=1000.0)
    other = NodeInfo(id="node-2", host="h2", pid=7, queues=("default",), concurrency=1,
                     started_at=1001.0, last_heartbeat=1001.0)
    store.upsert_node(node)
    store.upsert_node(other)

    beat = dataclasses.replace(node, last_heartbeat=1005.0, in_flight=2, done=10, status="stopped")
    store.upsert_node(beat)

    assert sorted(store.nodes(), key=lambda n: n.id) == [beat, other]
