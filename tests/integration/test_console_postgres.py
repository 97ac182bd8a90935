"""The console on the distributed backends: statistics that never skip a late commit, dead
letters on RabbitMQ, and search statements that walk an index."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from conveyor.broker.dead_letters import dead_letters_of
from conveyor.broker.rabbitmq import RabbitmqBroker
from conveyor.model import Task, TaskStatus
from conveyor.stats import open_stats
from conveyor.store.postgres import PostgresStore
from conveyor.store.postgres_queries import PostgresQueries
from conveyor.store.queries import TaskSearch

pytestmark = pytest.mark.integration


@pytest.fixture
def pg(postgres_schema_url: str) -> Iterator[PostgresStore]:
    store = PostgresStore(postgres_schema_url)
    yield store
    store.close()


def test_a_fold_waits_for_a_transaction_that_took_a_lower_seq(pg: PostgresStore, postgres_schema_url: str) -> None:
    stats = open_stats(pg)
    stats.fold()
    slow, _ = pg.create(Task(type="slow"), detail="submitted")
    with psycopg.connect(postgres_schema_url) as late:  # not autocommit: an open transaction
        late.execute("INSERT INTO task_events (task_id, from_status, to_status, at) VALUES (%s, 'queued', "
                     "'cancelled', %s)", (slow.id, time.time()))
        late.execute("UPDATE tasks SET status = 'cancelled' WHERE id = %s", (slow.id,))
        pg.create(Task(type="fast"), detail="submitted")  # a higher seq, visible first
        stats.fold()
        counts = stats.counts()["default"]
        assert counts == {"queued": 1}, "the fold stopped before the gap: nothing after it counted yet"
        late.commit()
    while stats.fold():
        pass
    assert stats.counts()["default"] == {"queued": 1, "cancelled": 1}
    totals = {(t, name): n for _, t, name, n in stats.totals()}
    assert totals == {("slow", "submitted"): 1, ("fast", "submitted"): 1, ("slow", "cancelled"): 1}


def test_search_statements_walk_an_index(pg: PostgresStore) -> None:
    pg.create_many([Task(type=f"t{i % 7}", queue=f"q{i % 3}") for i in range(500)])
    with pg._pool.connection() as conn:
        conn.execute("ANALYZE tasks")
        for search in (TaskSearch(), TaskSearch(status=TaskStatus.QUEUED), TaskSearch(type="t3"),
                       TaskSearch(queue="q1", created_after=time.time() - 60), TaskSearch(id_prefix="01")):
            sql, params = PostgresQueries.search_sql(search, limit=50, cursor=uuid.uuid4())
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, params).fetchall())
            assert "Seq Scan" not in plan, plan


@pytest.fixture
def rabbit(rabbitmq_url: str) -> Iterator[RabbitmqBroker]:
    broker = RabbitmqBroker(rabbitmq_url, namespace=f"test-{uuid.uuid4().hex[:8]}")
    yield broker
    broker.delete_topology()
    broker.close()


def test_rabbitmq_dead_letters_are_listed_replayed_and_deleted(rabbit: RabbitmqBroker) -> None:
    rabbit.declare_queue("work")
    for n in range(3):
        rabbit.publish(f'{{"n": {n}}}'.encode(), queue="work")
    consumer = rabbit.consume(["work"], prefetch=3)
    for n in range(3):
        delivery = consumer.get(5.0)
        assert delivery is not None
        delivery.dead_letter(f"bad message {n}")
    consumer.close()
    dead = dead_letters_of(rabbit)
    letters = dead.peek(10)
    assert [d.reason for d in letters] == ["bad message 0", "bad message 1", "bad message 2"]
    assert all(d.queue == "work" for d in letters)
    assert dead.replay([letters[1].id]) == 1
    assert dead.delete([letters[0].id]) == 1
    assert [d.reason for d in dead.peek(10)] == ["bad message 2"]
    consumer = rabbit.consume(["work"], prefetch=1)
    replayed = consumer.get(5.0)
    assert replayed is not None and replayed.body == b'{"n": 1}'
    assert "x-conveyor-reason" not in replayed.headers
    replayed.ack()
    consumer.close()
    assert dead.delete(None) == 1
    assert dead.peek(10) == []
