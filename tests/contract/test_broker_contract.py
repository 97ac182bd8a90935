"""The Broker contract: behaviour every Broker implementation shows, seen through the port only.

Brokers may be remote, so tests wait with ``consumer.get(timeout_s=...)`` instead of assuming
instant delivery, and each test uses fresh queue names. Tests named ``test_sqlite_*`` check
what only the embedded broker promises (its visibility lease, several processes on one file).
"""

from __future__ import annotations

import collections
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import pytest

from conveyor.broker.base import Broker, Consumer, Delivery
from conveyor.broker.sqlite import SqliteBroker

WAIT_S = 5.0  # generous upper bound for a message that should arrive
QUIET_S = 0.5  # how long to wait for a message that should not arrive


@pytest.fixture
def queue(broker: Broker) -> str:
    name = f"q-{uuid.uuid4().hex[:10]}"
    broker.declare_queue(name)
    return name


def _get(consumer: Consumer, timeout_s: float = WAIT_S) -> Delivery:
    delivery = consumer.get(timeout_s=timeout_s)
    assert delivery is not None, f"no delivery within {timeout_s} s"
    return delivery


def test_published_message_is_received_then_gone_once_acked(broker: Broker, queue: str) -> None:
    broker.publish(b"hello", queue=queue)
    consumer = broker.consume([queue], prefetch=1)

    delivery = _get(consumer)
    delivery.ack()

    assert (delivery.body, delivery.queue, delivery.redelivered) == (b"hello", queue, False)
    assert consumer.get(timeout_s=QUIET_S) is None
    assert broker.consume([queue], prefetch=1).get(timeout_s=QUIET_S) is None


def test_headers_are_preserved(broker: Broker, queue: str) -> None:
    broker.publish(b"{}", queue=queue, headers={"trace": "abc", "x-custom": "1"})

    delivery = _get(broker.consume([queue], prefetch=1))

    assert delivery.headers["trace"] == "abc" and delivery.headers["x-custom"] == "1"
    delivery.ack()


def test_messages_of_one_priority_arrive_in_publish_order(broker: Broker, queue: str) -> None:
    for i in range(5):
        broker.publish(str(i).encode(), queue=queue)
    consumer = broker.consume([queue], prefetch=5)

    bodies = []
    for _ in range(5):
        delivery = _get(consumer)
        bodies.append(delivery.body)
        delivery.ack()

    assert bodies == [b"0", b"1", b"2", b"3", b"4"]


def test_higher_priority_is_delivered_first(broker: Broker, queue: str) -> None:
    broker.publish(b"low", queue=queue, priority=1)
    broker.publish(b"high", queue=queue, priority=9)
    time.sleep(0.2)  # let a remote broker settle both before anyone consumes
    consumer = broker.consume([queue], prefetch=1)

    first = _get(consumer)
    first.ack()
    second = _get(consumer)
    second.ack()

    assert (first.body, second.body) == (b"high", b"low")


def test_consumer_receives_only_from_its_queues(broker: Broker, queue: str) -> None:
    other = f"q-{uuid.uuid4().hex[:10]}"
    third = f"q-{uuid.uuid4().hex[:10]}"
    broker.declare_queue(other)
    broker.declare_queue(third)
    broker.publish(b"a", queue=queue)
    broker.publish(b"b", queue=other)
    broker.publish(b"c", queue=third)
    consumer = broker.consume([queue, other], prefetch=2)

    received = {}
    for _ in range(2):
        delivery = _get(consumer)
        received[delivery.queue] = delivery.body
        delivery.ack()

    assert received == {queue: b"a", other: b"b"}
    assert consumer.get(timeout_s=QUIET_S) is None


def test_delayed_message_is_not_delivered_before_its_delay(broker: Broker, queue: str) -> None:
    published = time.monotonic()
    broker.publish(b"later", queue=queue, delay_s=1.5)
    consumer = broker.consume([queue], prefetch=1)

    assert consumer.get(timeout_s=0.8) is None
    delivery = _get(consumer)

    assert delivery.body == b"later"
    assert time.monotonic() - published >= 1.4
    delivery.ack()


def test_nack_with_requeue_redelivers(broker: Broker, queue: str) -> None:
    broker.publish(b"again", queue=queue, headers={"k": "v"})
    consumer = broker.consume([queue], prefetch=1)

    _get(consumer).nack(requeue=True)
    delivery = _get(consumer)

    assert (delivery.body, delivery.redelivered, delivery.headers["k"]) == (b"again", True, "v")
    delivery.ack()


def test_nack_with_requeue_and_delay_waits_before_redelivering(broker: Broker, queue: str) -> None:
    broker.publish(b"backoff", queue=queue)
    consumer = broker.consume([queue], prefetch=1)

    _get(consumer).nack(requeue=True, delay_s=1.0)

    assert consumer.get(timeout_s=0.5) is None
    delivery = _get(consumer)
    assert delivery.body == b"backoff"
    delivery.ack()


def test_nack_without_requeue_drops_the_message(broker: Broker, queue: str) -> None:
    broker.publish(b"drop", queue=queue)
    consumer = broker.consume([queue], prefetch=1)

    _get(consumer).nack(requeue=False)

    assert consumer.get(timeout_s=QUIET_S) is None


def test_dead_letter_keeps_body_headers_and_reason(broker: Broker, queue: str) -> None:
    body = f"poison-{uuid.uuid4().hex}".encode()
    broker.publish(body, queue=queue, headers={"trace": "t1"})
    consumer = broker.consume([queue], prefetch=1)

    _get(consumer).dead_letter("cannot parse")

    deadline = time.monotonic() + WAIT_S
    while not (dead := [h for b, h in broker.dead_letters(limit=1000) if b == body]):
        assert time.monotonic() < deadline, "dead letter never showed up"
        time.sleep(0.05)
    assert dead[0]["x-conveyor-reason"] == "cannot parse"
    assert dead[0]["trace"] == "t1"
    assert consumer.get(timeout_s=QUIET_S) is None


def test_consumer_never_holds_more_than_prefetch(broker: Broker, queue: str) -> None:
    for i in range(5):
        broker.publish(str(i).encode(), queue=queue)
    greedy = broker.consume([queue], prefetch=2)
    held = [_get(greedy), _get(greedy)]

    assert greedy.get(timeout_s=QUIET_S) is None

    other = broker.consume([queue], prefetch=5)
    rest = [_get(other) for _ in range(3)]
    bodies = sorted(d.body for d in held + rest)
    for delivery in held + rest:
        delivery.ack()
    assert bodies == [b"0", b"1", b"2", b"3", b"4"]


def test_acking_frees_a_prefetch_slot(broker: Broker, queue: str) -> None:
    for i in range(3):
        broker.publish(str(i).encode(), queue=queue)
    consumer = broker.consume([queue], prefetch=1)

    first = _get(consumer)
    assert consumer.get(timeout_s=QUIET_S) is None
    first.ack()

    _get(consumer).ack()


def test_closed_consumer_gives_back_what_it_did_not_hand_out(broker: Broker, queue: str) -> None:
    for i in range(3):
        broker.publish(str(i).encode(), queue=queue)
    first = broker.consume([queue], prefetch=3)
    _get(first).ack()
    time.sleep(0.2)  # a remote broker may still be pushing the other two to `first`

    first.close()
    second = broker.consume([queue], prefetch=3)
    bodies = []
    for _ in range(2):
        delivery = _get(second, timeout_s=2.0)  # well under any visibility lease
        bodies.append(delivery.body)
        delivery.ack()

    assert sorted(bodies) == [b"1", b"2"]


# -- SqliteBroker only ---------------------------------------------------------------------


@pytest.fixture
def short_lease_broker(sqlite_url: str) -> Iterator[SqliteBroker]:
    broker = SqliteBroker(sqlite_url, lease_s=0.4)
    yield broker
    broker.close()


def test_sqlite_message_whose_lease_expires_is_redelivered(short_lease_broker: SqliteBroker) -> None:
    broker, queue = short_lease_broker, "q"
    lease_s = broker.lease_s
    broker.publish(b"orphan", queue=queue)
    dead_consumer = broker.consume([queue], prefetch=1)
    assert _get(dead_consumer).body == b"orphan"  # leased, then never acked nor renewed
    started = time.monotonic()

    delivery = _get(broker.consume([queue], prefetch=1), timeout_s=lease_s + WAIT_S)

    assert time.monotonic() - started >= lease_s * 0.8
    assert (delivery.body, delivery.redelivered) == (b"orphan", True)
    delivery.ack()


def test_sqlite_acking_a_lost_lease_is_a_harmless_no_op(short_lease_broker: SqliteBroker) -> None:
    broker = short_lease_broker
    broker.publish(b"m", queue="q")
    slow = _get(broker.consume(["q"], prefetch=1))
    new_owner = _get(broker.consume(["q"], prefetch=1), timeout_s=2.0)

    slow.ack()
    slow.renew(10.0)
    new_owner.nack(requeue=True)

    again = _get(broker.consume(["q"], prefetch=1), timeout_s=2.0)
    assert (again.body, again.redelivered) == (b"m", True)
    again.ack()


def test_sqlite_renewed_delivery_is_not_redelivered(short_lease_broker: SqliteBroker) -> None:
    broker = short_lease_broker
    broker.publish(b"long task", queue="q")
    delivery = _get(broker.consume(["q"], prefetch=1))
    thief = broker.consume(["q"], prefetch=1)

    for _ in range(5):  # 1 s, 2.5 leases
        delivery.renew(broker.lease_s)
        assert thief.get(timeout_s=0.2) is None
    delivery.ack()


def test_sqlite_consumer_keeps_its_buffered_leases(short_lease_broker: SqliteBroker) -> None:
    broker = short_lease_broker
    for i in range(3):
        broker.publish(str(i).encode(), queue="q")
    consumer = broker.consume(["q"], prefetch=3)
    _get(consumer).ack()  # the other two now wait in its buffer

    assert broker.consume(["q"], prefetch=3).get(timeout_s=1.0) is None  # 2.5 leases

    rest = [_get(consumer, timeout_s=0.0) for _ in range(2)]
    assert [(d.body, d.redelivered) for d in rest] == [(b"1", False), (b"2", False)]
    for d in rest:
        d.ack()


_CHILD = textwrap.dedent("""
    import sys
    import time

    from conveyor.broker.sqlite import SqliteBroker

    broker = SqliteBroker(sys.argv[1], lease_s=30.0)
    consumer = broker.consume(["work"], prefetch=int(sys.argv[2]))
    print("ready", flush=True)
    while True:
        delivery = consumer.get(timeout_s=20.0)
        if delivery is None:
            sys.exit("starved")
        time.sleep(0.002)  # a little work, so neither process can drain the queue alone
        delivery.ack()
        if delivery.body == b"stop":
            break
        print(delivery.body.decode(), flush=True)
    broker.close()
""")


def test_sqlite_processes_sharing_a_file_each_get_every_message_once(sqlite_url: str) -> None:
    broker = SqliteBroker(sqlite_url)
    children = [
        subprocess.Popen([sys.executable, "-c", _CHILD, sqlite_url, str(prefetch)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for prefetch in (1, 4)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for i in range(200):
            broker.publish(str(i).encode(), queue="work", priority=1)
        for _ in children:  # lower priority: taken only once the work is all leased
            broker.publish(b"stop", queue="work", priority=0)
        outputs = [child.communicate(timeout=30) for child in children]
    finally:
        for child in children:
            child.kill()
        broker.close()

    assert [child.returncode for child in children] == [0, 0], [err for _, err in outputs]
    counts = collections.Counter(line for out, _ in outputs for line in out.split())
    assert counts == collections.Counter(str(i) for i in range(200))
    assert all(out.split() for out, _ in outputs), "one process got nothing"
