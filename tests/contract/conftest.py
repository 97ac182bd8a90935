"""One behaviour suite per port, run against every implementation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from conveyor.broker.base import Broker
from conveyor.store.base import Store


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "sqlite":
        from conveyor.store.sqlite import SqliteStore

        s: Store = SqliteStore(request.getfixturevalue("sqlite_url"))
    else:
        from conveyor.store.postgres import PostgresStore

        s = PostgresStore(request.getfixturevalue("postgres_schema_url"))
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param == "sqlite":
        from conveyor.broker.sqlite import SqliteBroker

        b: Broker = SqliteBroker(request.getfixturevalue("sqlite_url"), lease_s=2.0)
    else:
        from conveyor.broker.rabbitmq import RabbitmqBroker

        namespace = f"test-{uuid.uuid4().hex[:8]}"
        b = RabbitmqBroker(request.getfixturevalue("rabbitmq_url"), namespace=namespace)
    yield b
    if hasattr(b, "delete_topology"):
        b.delete_topology()  # leave no test queues behind on the shared server
    b.close()
