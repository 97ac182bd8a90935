"""RabbitmqBroker against the real RabbitMQ on 127.0.0.1: what the contract suite cannot see
(delay quantization, dead channels, a server restart, quorum queues)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from conveyor.broker import _amqp_loop
from conveyor.broker._amqp_loop import redact, resolve_url
from conveyor.broker.base import Broker
from conveyor.broker.rabbitmq import RabbitmqBroker, quantize_delay_ms
from conveyor.errors import BrokerConnectionError, ConfigError

WAIT_S = 5.0


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def broker(rabbitmq_url: str, namespace: str) -> Iterator[RabbitmqBroker]:
    broker = RabbitmqBroker(rabbitmq_url, namespace=namespace)
    yield broker
    broker.delete_topology()
    broker.close()


def _rabbitmqctl(*args: str, timeout_s: float = 60.0) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                          timeout=timeout_s, check=True)
    return done.stdout


def _queue_types(prefix: str) -> dict[str, str]:
    rows = json.loads(_rabbitmqctl("list_queues", "-q", "--formatter", "json", "name", "type"))
    return {row["name"]: row["type"] for row in rows if row["name"].startswith(prefix)}


def _as_port(broker: RabbitmqBroker) -> Broker:
    return broker  # mypy checks that RabbitmqBroker structurally implements the port


# -- no server needed ----------------------------------------------------------------------


@pytest.mark.parametrize(("delay_s", "expected_ms"), [
    (0.0, 0), (-1.0, 0), (0.001, 100), (0.1, 100), (0.3, 300), (0.301, 400), (0.95, 1000),
    (1.0, 1000), (1.001, 2000), (1.5, 2000), (59.2, 60000), (3600.0, 3600000),
])
def test_delay_is_rounded_up_to_100_ms_below_a_second_and_to_whole_seconds_above(
        delay_s: float, expected_ms: int) -> None:
    assert quantize_delay_ms(delay_s) == expected_ms


def test_quantized_delay_is_never_early_and_at_most_one_step_late() -> None:
    for tenth_ms in range(1, 50_000, 7):
        delay_ms = tenth_ms / 10
        quantized = quantize_delay_ms(delay_ms / 1000)
        assert delay_ms <= quantized <= delay_ms + (100 if delay_ms < 1000 else 1000)


def test_queue_type_comes_from_argument_then_url_then_env_then_default() -> None:
    url = "amqp://guest:guest@127.0.0.1:5672/?heartbeat=30&queue_type=quorum"
    env = {"CONVEYOR_QUEUE_TYPE": "quorum"}

    assert resolve_url(url, "classic", {}) == ("amqp://guest:guest@127.0.0.1:5672/?heartbeat=30", "classic")
    assert resolve_url(url, None, {})[1] == "quorum"
    assert resolve_url("amqp://h/", None, env) == ("amqp://h/", "quorum")
    assert resolve_url("amqp://h/", None, {}) == ("amqp://h/", "classic")
    with pytest.raises(ConfigError):
        resolve_url("amqp://h/?queue_type=mirrored", None, {})


def test_redacted_url_has_no_password() -> None:
    assert redact("amqp://guest:s3cret@rabbit:5672/vh?x=1") == "amqp://guest@rabbit:5672/vh?x=1"


def test_unreachable_server_raises_connection_error_without_the_password() -> None:
    with pytest.raises(BrokerConnectionError) as info:
        RabbitmqBroker("amqp://guest:s3cret@127.0.0.1:1/")

    assert "127.0.0.1:1" in str(info.value) and "s3cret" not in str(info.value)


# -- against RabbitMQ ----------------------------------------------------------------------


def test_delayed_message_arrives_after_its_delay_not_before(broker: RabbitmqBroker) -> None:
    assert _as_port(broker).lease_based is False
    published = time.monotonic()
    broker.publish(b"later", queue="work", delay_s=0.7)
    consumer = broker.consume(["work"], prefetch=1)

    assert consumer.get(timeout_s=0.55) is None
    delivery = consumer.get(timeout_s=WAIT_S)

    assert delivery is not None and delivery.body == b"later"
    assert 0.7 <= time.monotonic() - published < 1.7
    assert "x-first-death-queue" not in delivery.headers  # RabbitMQ's bookkeeping is hidden
    delivery.ack()


def test_delayed_message_for_a_queue_nobody_declared_yet_is_kept(broker: RabbitmqBroker) -> None:
    broker.publish(b"early bird", queue="fresh", delay_s=0.1)
    time.sleep(0.3)  # expired and routed before anyone consumes "fresh"

    delivery = broker.consume(["fresh"], prefetch=1).get(timeout_s=WAIT_S)
    assert delivery is not None and delivery.body == b"early bird"
    delivery.ack()


def test_delay_queue_that_vanished_is_declared_again(broker: RabbitmqBroker, namespace: str) -> None:
    consumer = broker.consume(["work"], prefetch=1)
    broker.publish(b"first", queue="work", delay_s=0.1)
    first = consumer.get(timeout_s=WAIT_S)
    assert first is not None
    first.ack()
    _rabbitmqctl("delete_queue", f"{namespace}.delay.work.100")  # as if it had expired

    broker.publish(b"second", queue="work", delay_s=0.1)

    second = consumer.get(timeout_s=WAIT_S)
    assert second is not None and second.body == b"second"
    second.ack()


def test_publish_many_delivers_every_message(broker: RabbitmqBroker) -> None:
    broker.publish_many([(str(i).encode(), "bulk", 0, 0.0, {"n": str(i)}) for i in range(300)])
    consumer = broker.consume(["bulk"], prefetch=50)

    seen = set()
    for _ in range(300):
        delivery = consumer.get(timeout_s=WAIT_S)
        assert delivery is not None
        assert delivery.headers["n"] == delivery.body.decode()
        seen.add(delivery.body)
        delivery.ack()

    assert len(seen) == 300


def test_unacked_message_of_a_dead_worker_is_redelivered_to_another_consumer(
        rabbitmq_url: str, broker: RabbitmqBroker, namespace: str) -> None:
    broker.publish(b"orphan", queue="work")
    doomed = RabbitmqBroker(rabbitmq_url, namespace=namespace)
    taken = doomed.consume(["work"], prefetch=1).get(timeout_s=WAIT_S)
    assert taken is not None and taken.redelivered is False

    doomed.close()  # the worker dies holding it
    taken.ack()  # too late: must not raise

    delivery = broker.consume(["work"], prefetch=1).get(timeout_s=WAIT_S)
    assert delivery is not None
    assert (delivery.body, delivery.redelivered) == (b"orphan", True)
    delivery.ack()


def test_settling_a_delivery_whose_channel_closed_is_a_harmless_no_op(broker: RabbitmqBroker) -> None:
    broker.publish(b"m", queue="work")
    consumer = broker.consume(["work"], prefetch=1)
    delivery = consumer.get(timeout_s=WAIT_S)
    assert delivery is not None

    consumer.close()
    delivery.ack()
    delivery.nack(requeue=False)

    again = broker.consume(["work"], prefetch=1).get(timeout_s=WAIT_S)
    assert again is not None and (again.body, again.redelivered) == (b"m", True)
    again.ack()


def test_dead_letters_are_peeked_oldest_first_and_left_in_place(broker: RabbitmqBroker) -> None:
    for body in (b"a", b"b", b"c"):
        broker.publish(body, queue="work", headers={"id": body.decode()})
    consumer = broker.consume(["work"], prefetch=3)
    for _ in range(3):
        delivery = consumer.get(timeout_s=WAIT_S)
        assert delivery is not None
        delivery.dead_letter("boom")

    first = broker.dead_letters(limit=10)
    assert broker.dead_letters(limit=10) == first
    assert [body for body, _ in first] == [b"a", b"b", b"c"]
    assert first[0][1] == {"id": "a", "x-conveyor-reason": "boom", "x-conveyor-queue": "work"}
    assert broker.dead_letters(limit=2) == first[:2]


def test_quorum_queue_type_declares_quorum_queues_that_work(rabbitmq_url: str, namespace: str) -> None:
    broker = RabbitmqBroker(f"{rabbitmq_url}?queue_type=quorum", namespace=namespace)
    try:
        broker.publish(b"now", queue="work", priority=5)
        broker.publish(b"soon", queue="work", delay_s=0.2)
        consumer = broker.consume(["work", "other"], prefetch=2)
        bodies = []
        for _ in range(2):
            delivery = consumer.get(timeout_s=WAIT_S)
            assert delivery is not None
            bodies.append(delivery.body)
            delivery.ack()

        assert bodies == [b"now", b"soon"]
        types = _queue_types(namespace)
        assert types[f"{namespace}.work"] == "quorum"
        assert types[f"{namespace}.delay.work.200"] == "quorum"
    finally:
        broker.delete_topology()
        broker.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_broker_keeps_working_across_a_rabbitmq_restart(rabbitmq_url: str, namespace: str) -> None:
    broker = RabbitmqBroker(rabbitmq_url, namespace=namespace)
    errors: list[BaseException] = []
    try:
        broker.publish(b"parked", queue="idle")  # nobody consumes it during the restart
        broker.publish(b"held", queue="busy")
        busy = broker.consume(["busy"], prefetch=1)
        held = busy.get(timeout_s=WAIT_S)  # unacked across the restart
        assert held is not None
        consumer = broker.consume(["live"], prefetch=1)
        assert consumer.get(timeout_s=0.2) is None

        _rabbitmqctl("stop_app")
        try:
            publisher = threading.Thread(target=_publish_capturing, args=(broker, errors))
            publisher.start()  # publishing during the outage waits for the server
            time.sleep(1.0)
            assert publisher.is_alive()
        finally:
            _rabbitmqctl("start_app")
        publisher.join(timeout=40)
        assert not publisher.is_alive() and errors == []

        broker.publish(b"after", queue="live")
        bodies = []
        for _ in range(2):  # the consumer was restored
            delivery = consumer.get(timeout_s=20.0)
            assert delivery is not None
            bodies.append(delivery.body)
            delivery.ack()
        assert sorted(bodies) == [b"after", b"during"]
        held.ack()  # its channel died with the connection: a no-op, and it comes back
        again = busy.get(timeout_s=WAIT_S)
        assert again is not None and (again.body, again.redelivered) == (b"held", True)
        again.ack()
        parked = broker.consume(["idle"], prefetch=1).get(timeout_s=WAIT_S)
        assert parked is not None and parked.body == b"parked"
        parked.ack()
    finally:
        _rabbitmqctl("start_app")  # idempotent: make sure the server is up for what follows
        _rabbitmqctl("await_startup", timeout_s=120)
        broker.delete_topology()
        broker.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_publish_gives_up_with_connection_error_after_a_bounded_outage(
        rabbitmq_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_amqp_loop, "OUTAGE_S", 1.5)
    broker = RabbitmqBroker(rabbitmq_url, namespace=namespace)
    try:
        broker.declare_queue("work")
        _rabbitmqctl("stop_app")
        started = time.monotonic()
        with pytest.raises(BrokerConnectionError):
            broker.publish(b"lost", queue="work")
        assert 1.4 <= time.monotonic() - started < 5.0
    finally:
        _rabbitmqctl("start_app")
        _rabbitmqctl("await_startup", timeout_s=120)
        broker.delete_topology()
        broker.close()


def _publish_capturing(broker: RabbitmqBroker, errors: list[BaseException]) -> None:
    try:
        broker.publish(b"during", queue="live")
    except BaseException as exc:
        errors.append(exc)


def test_a_delay_longer_than_one_hop_is_capped_to_the_hop() -> None:
    from conveyor.broker.rabbitmq import MAX_DELAY_S

    assert quantize_delay_ms(400 * 24 * 3600) == int(MAX_DELAY_S * 1000)
    assert quantize_delay_ms(MAX_DELAY_S - 0.5) == int(MAX_DELAY_S * 1000)
