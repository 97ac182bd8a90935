"""Chaos fixtures: Conveyor workers on the shared servers (own vhost + schema) or on private
servers the scenario may stop, kill and cut off (``servers.py``); the figures table at the end.

Size: short by default (CI, inside ``make test``); ``CONVEYOR_CHAOS=full`` (``make chaos``) runs
the sizes of issue 11.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import FULL, TALLIES
from tests.chaos.servers import PrivatePostgres, PrivateRabbit
from tests.conftest import require_service
from tests.integration.conftest import Cluster, cluster, serve, vhost_url  # noqa: F401  (fixtures used here)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLIES:
        return
    form = "full" if FULL else "short"
    terminalreporter.section(f"chaos scenarios ({form} form)")
    for tally in TALLIES:
        terminalreporter.write_line(tally.line())


@pytest.fixture(scope="session")
def private_rabbit() -> Iterator[PrivateRabbit]:
    """A RabbitMQ node of our own for the scenarios that stop or restart the broker."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmq-server is not installed (scripts/install-debian-packages.sh --services)")
    node = PrivateRabbit()
    try:
        node.start()
        yield node
    finally:
        node.close()


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of our own for the scenarios that terminate, refuse or restart it."""
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


class PrivateCluster(Cluster):
    """A ``Cluster`` on the private servers; ``database`` is its own database there."""

    def __init__(self, tmp_path: Path, broker_url: str, store_url: str, database: str) -> None:
        super().__init__(tmp_path, broker_url, store_url)
        self.database = database


@pytest.fixture
def private_cluster(tmp_path: Path, private_rabbit: PrivateRabbit, private_pg: PrivatePostgres,
                    request: pytest.FixtureRequest) -> Iterator[PrivateCluster]:
    """Workers and a client on the private servers: own vhost, own database."""
    require_service("PostgreSQL", "127.0.0.1", private_pg.port)
    name = f"chaos_{uuid.uuid4().hex[:8]}"
    private_rabbit.ctl("add_vhost", name)
    private_rabbit.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    store_url = private_pg.create_database(name)
    yield from serve(PrivateCluster(tmp_path, private_rabbit.url + name, store_url, name), request)
