"""PostgresStore against the real server: migrations, concurrency, batching, paging and plans.

The behaviour shared with SqliteStore lives in tests/contract; this file covers what only the
PostgreSQL store has (migrations, pooling under threads, update_many, index use).
"""

from __future__ import annotations

import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest

from conveyor.errors import ConcurrentUpdate, InvalidTransition, StoreError
from conveyor.model import Task, TaskFilter, TaskStatus
from conveyor.store.base import Outcome
from conveyor.store.migrate import migrations, upgrade
from conveyor.store.postgres import PostgresStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

S = TaskStatus
T = TypeVar("T")


@pytest.fixture
def store(postgres_schema_url: str) -> Iterator[PostgresStore]:
    s = PostgresStore(postgres_schema_url)
    yield s
    s.close()


def _schema_of(url: str) -> str:
    options = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["options"][0]
    return options.removeprefix("-csearch_path=")


def _in_threads(n: int, fn: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``fn(i)`` in ``n`` threads released together; return each result or exception."""
    barrier = threading.Barrier(n)
    results: list[T | BaseException] = [RuntimeError("did not run")] * n

    def run(i: int) -> None:
        barrier.wait(timeout=10)
        try:
            results[i] = fn(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_upgrade_applies_every_migration_once_and_then_nothing(postgres_schema_url: str) -> None:
    every = [m.version for m in migrations()]
    assert every[0] == 1
    assert upgrade(postgres_schema_url) == every
    assert upgrade(postgres_schema_url) == []
    PostgresStore(postgres_schema_url).close()  # opening with migrate=True finds nothing to do
    with psycopg.connect(postgres_schema_url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == every


def test_concurrent_upgrades_all_succeed_and_apply_each_migration_once(postgres_schema_url: str) -> None:
    results = _in_threads(4, lambda _: upgrade(postgres_schema_url))
    assert not [r for r in results if isinstance(r, BaseException)]
    applied = sorted(v for r in results if isinstance(r, list) for v in r)
    assert applied == [m.version for m in migrations()]


def test_tables_are_created_in_the_schema_named_by_the_url(
    postgres_schema_url: str, postgres_url: str, store: PostgresStore
) -> None:
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
            (_schema_of(postgres_schema_url),),
        ).fetchall()
    flow = ["flow_buckets", "flow_edges", "flow_limits", "flow_parked", "flow_reserved", "flow_slots", "flow_steps",
            "flow_workflows"]  # flow control's (migration 0006)
    assert [r[0] for r in rows] == [*flow, "nodes", "schema_migrations", "stats_buckets", "stats_counts",
                                    "stats_minutes", "stats_nodes", "stats_state", "stats_totals", "task_events",
                                    "task_outbox", "tasks"]


def test_eight_threads_racing_one_compare_and_set_have_exactly_one_winner_each_round(
    store: PostgresStore,
) -> None:
    task, _ = store.create(Task(type="race"))
    rounds = 10
    for n in range(rounds):
        snapshot = store.get(task.id)
        to = S.RUNNING if snapshot.status is S.QUEUED else S.QUEUED

        def cas(i: int, t: Task = snapshot, to: TaskStatus = to) -> Task:
            return store.update(t, to, detail=f"thread {i}")

        results = _in_threads(8, cas)
        winners = [r for r in results if isinstance(r, Task)]
        losers = [r for r in results if isinstance(r, ConcurrentUpdate)]
        assert (len(winners), len(losers)) == (1, 7), results
        assert winners[0].version == n + 1
    assert len(store.events(task.id)) == 1 + rounds


def test_concurrent_creates_with_one_idempotency_key_insert_one_task(store: PostgresStore) -> None:
    results = _in_threads(
        8, lambda i: store.create(Task(type="once", idempotency_key="k-1", params={"i": i}))
    )
    pairs = [r for r in results if isinstance(r, tuple)]
    assert len(pairs) == 8
    assert sum(created for _, created in pairs) == 1
    assert len({t.id for t, _ in pairs}) == 1
    assert len(store.events(pairs[0][0].id)) == 1


def test_update_many_applies_a_batch_and_reports_compare_and_set_losers_as_none(store: PostgresStore) -> None:
    a, _ = store.create(Task(type="a"))
    b, _ = store.create(Task(type="b"))
    c, _ = store.create(Task(type="c"))
    stale_c = c
    c = store.update(c, S.RUNNING, node="n1")
    ghost = Task(type="never stored")

    out = store.update_many([
        (a, S.RUNNING, "n1", "started", {"attempts": 1, "lease_until": 50.0}),
        (b, None, None, None, {"priority": 7, "params": {"x": [1, 2]}}),
        (stale_c, S.CANCELLED, None, "too late", {}),
        (ghost, S.RUNNING, "n1", None, {}),
        (c, S.SUCCEEDED, None, "done", {"result": {"ok": True}, "finished_at": 9.0}),
    ])  # fmt: skip

    new_a, new_b, lost_c, lost_ghost, new_c = out
    assert lost_c is None and lost_ghost is None
    assert new_a is not None and new_a == store.get(a.id)
    assert (new_a.status, new_a.node, new_a.attempts, new_a.version) == (S.RUNNING, "n1", 1, 1)
    assert new_b is not None and (new_b.priority, new_b.params, new_b.version) == (7, {"x": [1, 2]}, 1)
    assert new_c is not None and (new_c.status, new_c.result, new_c.version) == (S.SUCCEEDED, {"ok": True}, 2)
    assert [e.detail for e in store.events(a.id)] == [None, "started"]
    assert len(store.events(b.id)) == 1  # a field-only change records no event
    assert [e.to_status for e in store.events(c.id)] == [S.QUEUED, S.RUNNING, S.SUCCEEDED]
    assert store.update_many([]) == []


def test_update_many_with_an_invalid_transition_writes_nothing(store: PostgresStore) -> None:
    a, _ = store.create(Task(type="a"))
    b, _ = store.create(Task(type="b", status=S.SUCCEEDED))
    with pytest.raises(InvalidTransition):
        store.update_many([(a, S.RUNNING, "n1", None, {}), (b, S.RUNNING, "n1", None, {})])
    assert store.get(a.id).version == 0


def test_replaying_an_update_with_the_stale_version_adds_no_second_event(store: PostgresStore) -> None:
    task, _ = store.create(Task(type="report"))
    running = store.update(task, S.RUNNING, node="n1", detail="attempt 1")
    store.update(running, S.SUCCEEDED, node="n1", detail="done", result=42)
    with pytest.raises(ConcurrentUpdate):
        store.update(running, S.SUCCEEDED, node="n1", detail="done", result=42)
    assert store.update_many([(running, S.SUCCEEDED, "n1", "done", {"result": 42})]) == [None]
    assert [e.to_status for e in store.events(task.id)] == [S.QUEUED, S.RUNNING, S.SUCCEEDED]


def test_the_owners_outcome_lands_after_its_renewals_and_anothers_renewal_changes_nothing(
        store: PostgresStore) -> None:
    task, _ = store.create(Task(type="long"))
    running = store.update(task, S.RUNNING, node="n1", attempts=1, lease_until=10.0)
    assert store.renew_leases([(running.id, 1)], "n1", 99.0) == {running.id}
    lease = store.get(task.id).lease_until
    assert store.renew_leases([(running.id, 1)], "someone-else", 5.0) == set()
    assert store.get(task.id).lease_until == lease
    [done] = store.finish_many([Outcome(task.id, 1, S.SUCCEEDED, result=42)], "n1")
    assert done is not None and done.result == 42


def _fill(
    store: PostgresStore,
    n: int,
    statuses: tuple[TaskStatus, ...] = (S.QUEUED, S.RUNNING, S.SUCCEEDED, S.FAILED),
) -> dict[TaskStatus, list[uuid.UUID]]:
    ids: dict[TaskStatus, list[uuid.UUID]] = {s: [] for s in statuses}
    for i in range(n):
        status = statuses[i % len(statuses)]
        task, _ = store.create(Task(type=f"t{i % 3}", queue=f"q{i % 2}", status=status))
        ids[status].append(task.id)
    return ids


def _all_pages(store: PostgresStore, filter: TaskFilter, limit: int) -> list[uuid.UUID]:
    seen: list[uuid.UUID] = []
    cursor: uuid.UUID | None = None
    while True:
        page = store.query(filter, limit=limit, cursor=cursor)
        assert len(page.tasks) <= limit
        seen += [t.id for t in page.tasks]
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


def test_keyset_paging_over_2000_tasks_returns_each_once_newest_first(store: PostgresStore) -> None:
    ids = _fill(store, 2000)
    everything = sorted((i for group in ids.values() for i in group), reverse=True)
    assert _all_pages(store, TaskFilter(), limit=37) == everything
    assert _all_pages(store, TaskFilter(status=S.FAILED), limit=50) == sorted(ids[S.FAILED], reverse=True)
    both = _all_pages(store, TaskFilter(status=S.RUNNING, queue="q1"), limit=64)
    assert both == sorted(ids[S.RUNNING], reverse=True)  # every running task is in q1 (i % 4 == 1)
    assert store.count_by_status()["succeeded"] == 500


def _plan(url: str, sql: str, params: list[Any]) -> str:
    with psycopg.connect(url) as conn:
        return "\n".join(row[0] for row in conn.execute(f"EXPLAIN {sql}", params))


def test_a_status_query_is_served_by_the_status_index(store: PostgresStore, postgres_schema_url: str) -> None:
    # As in production: finished tasks pile up, the few live ones are what the dashboard pages through.
    _fill(store, 2000, statuses=(S.SUCCEEDED,) * 9 + (S.FAILED,))
    with psycopg.connect(postgres_schema_url, autocommit=True) as conn:
        conn.execute("ANALYZE tasks")
    first = PostgresStore.query_sql(TaskFilter(status=S.FAILED), limit=50, cursor=None)
    second_page = store.query(TaskFilter(status=S.FAILED), limit=50).next_cursor
    assert second_page is not None
    later = PostgresStore.query_sql(TaskFilter(status=S.FAILED), limit=50, cursor=second_page)
    for sql, params in (first, later):
        plan = _plan(postgres_schema_url, sql, params)
        assert "Index Scan using tasks_status_id" in plan, plan
        assert "Seq Scan" not in plan, plan


def test_an_unreachable_server_is_a_store_error() -> None:
    with pytest.raises(StoreError):
        PostgresStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout_s=0.5)


def test_concurrent_status_writes_share_transactions(postgres_schema_url: str) -> None:
    """Group commit: writes from many worker threads go in batches, not one round trip each."""
    from concurrent.futures import ThreadPoolExecutor

    from conveyor.model import Task, TaskFilter, TaskStatus
    from conveyor.store.postgres import PostgresStore

    store = PostgresStore(postgres_schema_url)
    batches: list[int] = []
    write_batch = store._write_batch

    def counting(writes):  # type: ignore[no-untyped-def]
        batches.append(len(writes))
        return write_batch(writes)

    store._writes._flush = counting
    try:
        def lifecycle(i: int) -> TaskStatus:
            task, _ = store.create(Task(type="t", params={"i": i}))
            running = store.update(task, TaskStatus.RUNNING, node="n")
            return store.update(running, TaskStatus.SUCCEEDED, result=i).status

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lifecycle, range(200)))
        assert statuses == [TaskStatus.SUCCEEDED] * 200
        assert sum(batches) == 600
        assert len(batches) < 600 * 0.75, f"{len(batches)} transactions for 600 writes"
        events = store.events(store.query(TaskFilter(), limit=1).tasks[0].id)
        assert [e.to_status for e in events] == [TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.SUCCEEDED]
    finally:
        store.close()


def test_a_data_exception_is_store_refused_and_an_outage_is_not(postgres_url: str) -> None:
    """The worker dead-letters a delivery whose data the store refuses (SQLSTATE class 22) and
    waits out anything else: the two must be told apart, by both drivers."""
    import asyncio

    from conveyor.errors import StoreRefused
    from conveyor.store.postgres import _driver_errors
    from conveyor.store.postgres_async import AsyncPostgres

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        with pytest.raises(StoreRefused, match=r"division by zero \[22012\]"), _driver_errors("select"):
            conn.execute("SELECT 1/0")
        with pytest.raises(StoreError) as outage, _driver_errors("select"):
            conn.execute("SELECT * FROM no_such_table_here")
        assert not isinstance(outage.value, StoreRefused)

    async def through_asyncpg() -> tuple[BaseException, BaseException]:
        db = AsyncPostgres(postgres_url)
        await db.open()
        try:
            with pytest.raises(StoreRefused) as refused:
                await db._fetch("SELECT 1/0", ())
            with pytest.raises(StoreError) as other:
                await db._fetch("SELECT * FROM no_such_table_here", ())
            return refused.value, other.value
        finally:
            await db.close()

    refused, other = asyncio.run(through_asyncpg())
    assert "22012" in str(refused) and not isinstance(other, StoreRefused)


def test_a_statement_left_unanswered_is_given_up_and_its_connection_dropped(postgres_url: str) -> None:
    """A worker's write sent into a network cut would otherwise hang until TCP gives up; here the
    server stays silent for 5 s (pg_sleep) and the statement timeout is 0.3 s."""
    import asyncio

    from conveyor.store.postgres_async import AsyncPostgres

    async def run() -> tuple[float, str, int]:
        db = AsyncPostgres(postgres_url, min_size=1, max_size=1, statement_timeout_s=0.3)
        await db.open()
        try:
            pid_before = (await db._fetch("SELECT pg_backend_pid()", ()))[0][0]
            started = time.monotonic()
            with pytest.raises(StoreError) as hung:
                await db._fetch("SELECT pg_sleep(5)", ())
            waited = time.monotonic() - started
            pid_after = (await db._fetch("SELECT pg_backend_pid()", ()))[0][0]  # the pool still serves
            return waited, str(hung.value), int(pid_after != pid_before)
        finally:
            await db.close()

    waited, message, new_connection = asyncio.run(run())
    assert waited < 2.0, f"the statement was waited for {waited:.1f} s"
    assert "no answer within 0.3 s" in message
    assert new_connection, "the connection in doubt went back to the pool"
