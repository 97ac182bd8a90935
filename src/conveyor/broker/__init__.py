"""Brokers, chosen by URL: ``sqlite:///path`` (embedded) or ``amqp://...`` (RabbitMQ)."""

from __future__ import annotations

from conveyor.broker.base import Broker, Consumer, Delivery
from conveyor.config import mask_url
from conveyor.errors import BrokerConnectionError, ConfigError

__all__ = ["Broker", "Consumer", "Delivery", "open_broker"]


def open_broker(url: str, *, lease_s: float = 30.0) -> Broker:
    """``lease_s`` is the embedded broker's visibility lease (RabbitMQ holds deliveries by
    connection and has none)."""
    if url.startswith("sqlite:"):
        from conveyor.broker.sqlite import SqliteBroker

        return SqliteBroker(url, lease_s=lease_s)
    if url.startswith(("amqp:", "amqps:")):
        from conveyor.broker.rabbitmq import RabbitmqBroker
        from conveyor.preflight import explain_amqp

        try:
            return RabbitmqBroker(url)
        except BrokerConnectionError as exc:
            raise explain_amqp(url, exc) from exc
    raise ConfigError(f"unsupported broker URL {mask_url(url)!r}: use sqlite:///PATH or amqp://...")
