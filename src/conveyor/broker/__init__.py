"""Brokers, chosen by URL: ``sqlite:///path`` (embedded) or ``amqp://...`` (RabbitMQ)."""

from __future__ import annotations

from conveyor.broker.base import Broker, Consumer, Delivery
from conveyor.errors import ConfigError

__all__ = ["Broker", "Consumer", "Delivery", "open_broker"]


def open_broker(url: str) -> Broker:
    if url.startswith("sqlite:"):
        from conveyor.broker.sqlite import SqliteBroker

        return SqliteBroker(url)
    if url.startswith(("amqp:", "amqps:")):
        from conveyor.broker.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url)
    raise ConfigError(f"unsupported broker URL {url!r}: use sqlite:///PATH or amqp://...")
