"""The console's read queries and statistics, on every store: search and keyset paging, id
prefixes, and statistics folded from the timeline that agree with the tasks table."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from conveyor.errors import TaskNotFound
from conveyor.model import NodeInfo, Task, TaskStatus
from conveyor.stats import open_stats
from conveyor.stats.store import StatsStore
from conveyor.store.base import Outcome, Store
from conveyor.store.queries import AmbiguousId, TaskQueries, TaskSearch, open_queries, resolve_id

S = TaskStatus


@pytest.fixture
def queries(store: Store) -> TaskQueries:
    return open_queries(store)


@pytest.fixture
def stats(store: Store) -> Any:
    opened = open_stats(store)
    yield opened
    opened.close()


def _create(store: Store, **fields: Any) -> Task:
    task, _ = store.create(Task(**{"type": "email.send", **fields}), detail="submitted")
    return task


def _start(store: Store, task: Task, node: str = "n1") -> Task:
    started = store.claim_many([(task.id, task.attempts + 1)], node, 30.0)[0]
    assert started is not None
    return started


def _finish(store: Store, task: Task, status: TaskStatus, **changes: Any) -> Task:
    """The owner records how a running attempt ended (the worker's own write)."""
    outcome = Outcome(task.id, task.attempts, status, result=changes.get("result"), error=changes.get("error"),
                      retry_in_s=60.0 if status is S.RETRYING else 0.0, publish=status is S.RETRYING)
    written = store.finish_many([outcome], task.node or "")[0]
    assert written is not None
    return written


def test_search_filters_combine_and_page_newest_first(store: Store, queries: TaskQueries) -> None:
    made = [_create(store, type="a" if i % 2 else "b", queue="q1" if i < 5 else "q2") for i in range(10)]
    _finish(store, _start(store, made[1]), S.SUCCEEDED, result=1)
    pages, cursor = [], None
    while True:
        page = queries.search(TaskSearch(queue="q1"), limit=2, cursor=cursor)
        pages.append([t.id for t in page.tasks])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [i for p in pages for i in p] == sorted((t.id for t in made[:5]), reverse=True)
    # Ids of one millisecond order by their random bits: compare with the ids sorted.
    assert [t.id for t in queries.search(TaskSearch(queue="q1", type="a")).tasks] == sorted(
        [made[3].id, made[1].id], reverse=True)
    assert [t.id for t in queries.search(TaskSearch(status=S.SUCCEEDED, node="n1")).tasks] == [made[1].id]
    assert queries.search(TaskSearch(status=S.SUCCEEDED, type="b")).tasks == []


def test_time_range_and_idempotency_key(store: Store, queries: TaskQueries) -> None:
    old = _create(store, created_at=time.time() - 7200, id=_id_at(time.time() - 7200))
    new = _create(store, idempotency_key="order-9")
    assert [t.id for t in queries.search(TaskSearch(created_after=time.time() - 60)).tasks] == [new.id]
    assert [t.id for t in queries.search(TaskSearch(created_before=time.time() - 3600)).tasks] == [old.id]
    assert [t.id for t in queries.search(TaskSearch(idempotency_key="order-9")).tasks] == [new.id]


def _id_at(at: float) -> uuid.UUID:
    """A UUIDv7 of time ``at`` (as TaskService makes them)."""
    return uuid.UUID(int=(int(at * 1000) << 80) | (0x7 << 76) | (0b10 << 62) | uuid.uuid4().int % (1 << 62))


def test_an_id_prefix_finds_its_task_and_names_the_ambiguous(store: Store, queries: TaskQueries) -> None:
    first = _create(store, id=uuid.UUID("01900000-0000-7000-8000-00000000aaaa"))
    _create(store, id=uuid.UUID("01900000-0000-7000-8000-00000000bbbb"))
    assert resolve_id(queries, "01900000-0000-7000-8000-00000000a") == first.id
    assert resolve_id(queries, str(first.id).upper()) == first.id
    with pytest.raises(AmbiguousId, match="give more characters"):
        resolve_id(queries, "019000")
    with pytest.raises(TaskNotFound):
        resolve_id(queries, "0191")
    with pytest.raises(TaskNotFound):
        resolve_id(queries, "not-an-id")
    assert [t.id for t in queries.search(TaskSearch(id_prefix="01900000000070008000"), limit=5).tasks] == [
        uuid.UUID("01900000-0000-7000-8000-00000000bbbb"), first.id]


def test_oldest_waiting_and_recent_finishes_per_queue(store: Store, queries: TaskQueries) -> None:
    at = time.time()
    _create(store, queue="a", queued_at=at - 50)
    _create(store, queue="a", queued_at=at - 10)
    done = _create(store, queue="b", queued_at=at)
    _finish(store, _start(store, done), S.SUCCEEDED, result=None)
    oldest = queries.oldest_waiting()
    assert set(oldest) == {"a"} and oldest["a"] == pytest.approx(at - 50)
    assert queries.finished_since(at - 60) == {"b": 1}


def _by_status(store: Store) -> dict[str, int]:
    return {k: v for k, v in store.count_by_status().items() if v}


def _flat(stats: StatsStore) -> dict[str, int]:
    totals: dict[str, int] = {}
    for by_status in stats.counts().values():
        for status, n in by_status.items():
            totals[status] = totals.get(status, 0) + n
    return totals


def test_folded_counts_follow_every_status_change(store: Store, stats: StatsStore) -> None:
    stats.fold()  # starts counting
    tasks = [_create(store, queue="q") for _ in range(6)]
    _finish(store, _start(store, tasks[0]), S.SUCCEEDED, result={"ok": True})
    failed = _finish(store, _start(store, tasks[1]), S.FAILED, error={"type": "boom"})
    store.update(failed, S.QUEUED, detail="retried on request", finished_at=None)
    _finish(store, _start(store, tasks[2]), S.RETRYING, error={"type": "later"})
    store.update(tasks[3], S.CANCELLED, finished_at=time.time())
    while stats.fold():
        pass
    assert _flat(stats) == _by_status(store)
    totals = {name: n for q, t, name, n in stats.totals() if q == "q"}
    assert (totals["submitted"], totals["started"], totals["succeeded"], totals["failed"], totals["cancelled"],
            totals["retried"]) == (6, 3, 1, 1, 1, 2)
    assert totals["run_seconds_count"] == 3 and totals["queue_wait_seconds_count"] == 3
    assert stats.node_totals()["n1"] == {"started": 3, "succeeded": 1, "failed": 1, "retried": 1}
    assert sum(n for *_, n in stats.buckets()) == 6
    minute = int(time.time() // 60)
    per_minute = {name: n for m, _, name, n in stats.minutes(minute - 1)}
    assert per_minute["succeeded"] == 1 and per_minute["started"] == 3


def test_counts_start_from_the_tasks_already_stored(store: Store, stats: StatsStore) -> None:
    _create(store)
    _finish(store, _start(store, _create(store)), S.SUCCEEDED, result=None)
    assert stats.has_pending()
    stats.fold()
    assert _flat(stats) == _by_status(store) == {"queued": 1, "succeeded": 1}
    assert stats.totals() == []  # counters start at zero from the first fold
    assert not stats.has_pending()


def test_prune_deletes_old_finished_tasks_and_their_counts(store: Store, stats: StatsStore) -> None:
    stats.fold()
    old = [_finish(store, _start(store, _create(store)), S.SUCCEEDED, result=None) for _ in range(3)]
    keep = _create(store)
    cutoff = time.time() + 1
    assert stats.prune(cutoff, limit=2) == 2
    assert stats.prune(cutoff, limit=2) == 1
    assert stats.prune(cutoff, limit=2) == 0
    for task in old:
        with pytest.raises(TaskNotFound):
            store.get(task.id)
        assert store.events(task.id) == []
    assert store.get(keep.id).status is S.QUEUED
    assert _flat(stats) == _by_status(store) == {"queued": 1}


def test_prune_nodes_forgets_long_silent_nodes(store: Store, stats: StatsStore) -> None:
    at = time.time()
    nodes = (("fresh", at, "live"), ("gone", at - 90_000, "stopped"), ("dead", at - 90_000, "lost"))
    for node_id, beat, status in nodes:
        store.upsert_node(NodeInfo(id=node_id, host="h", pid=1, queues=("q",), concurrency=1, started_at=at - 10**5,
                                   last_heartbeat=beat, status=status))
    assert stats.prune_nodes(at - 86_400) == 2
    assert [n.id for n in store.nodes()] == ["fresh"]


def test_reconcile_repairs_counts_that_drifted(store: Store, stats: StatsStore) -> None:
    _create(store)
    stats.fold()
    stats._read("SELECT 1")
    with stats._transaction() as (run, _):
        run(stats._sql("UPDATE stats_counts SET n = ?"), (42,))
    assert _flat(stats) == {"queued": 42}
    assert stats.reconcile()
    assert _flat(stats) == {"queued": 1}
