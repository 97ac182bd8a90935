"""Dramatiq app for the benchmark: actor ``noop`` on ``$BENCH_QUEUE`` with confirmed publishes
(``BENCH_CONFIRM=0`` turns confirms off, used only to fill queues quickly)."""

from __future__ import annotations

import os

import dramatiq
from benchlib.record import record
from dramatiq.brokers.rabbitmq import RabbitmqBroker

broker = RabbitmqBroker(url=os.environ.get("BENCH_DRAMATIQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
                        confirm_delivery=os.environ.get("BENCH_CONFIRM", "1") == "1")
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=os.environ.get("BENCH_QUEUE", "bench"), max_retries=0)
def noop(i: int = 0, sent: float = 0.0) -> None:
    record(sent)
