"""Flow control end to end on RabbitMQ + PostgreSQL, with real worker processes: the scenarios
of ``tests/flow/scenarios.py`` (the same run on the embedded default in
``tests/e2e/test_flow_embedded.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import pytest

from conveyor.config import Settings
from tests.execlog import EXEC_LOG_ENV, Execution
from tests.flow import app as flow_app
from tests.flow import scenarios
from tests.integration.conftest import HEARTBEAT_S, LEASE_S, Cluster
from tests.processes import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


class Distributed:
    name = "rabbitmq+postgres"
    lease_s = LEASE_S
    heartbeat_s = HEARTBEAT_S

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.app = flow_app.app
        self.app.close()
        self.app.use_settings(Settings(broker_url=cluster.broker_url, store_url=cluster.store_url, lease_s=LEASE_S,
                                       heartbeat_s=HEARTBEAT_S))

    def start(self, node_ids: Sequence[str], concurrency: int = 8) -> list[WorkerProcess]:
        started = [self.cluster.start(n, concurrency=concurrency, wait_ready=False, app=scenarios.APP_REF)
                   for n in node_ids]
        for worker in started:
            self.cluster.wait_ready(worker)
        return started

    def executions(self) -> list[Execution]:
        return self.cluster.executions()


@pytest.fixture
def deployment(cluster: Cluster) -> Iterator[Distributed]:
    os.environ[EXEC_LOG_ENV] = str(cluster.exec_log)
    distributed = Distributed(cluster)
    try:
        yield distributed
    finally:
        distributed.app.close()
        os.environ.pop(EXEC_LOG_ENV, None)


def test_unique_tasks_are_deduped_while_waiting_or_running(deployment: Distributed) -> None:
    scenarios.unique_tasks_dedupe_while_active(deployment)


def test_a_per_key_concurrency_limit_is_never_exceeded_through_a_sigkill(deployment: Distributed) -> None:
    scenarios.concurrency_limit_holds_through_a_sigkill(deployment)


def test_a_global_rate_limit_holds_within_ten_percent_on_three_nodes(deployment: Distributed) -> None:
    scenarios.rate_limit_holds_across_three_nodes(deployment, seconds=10)


@pytest.mark.skipif(not os.environ.get("CONVEYOR_TEST_LONG"), reason="30 s run: make flow-long")
@pytest.mark.timeout(300)
def test_a_global_rate_limit_holds_within_ten_percent_for_30_s(deployment: Distributed) -> None:
    scenarios.rate_limit_holds_across_three_nodes(deployment, seconds=30)


def test_a_broadcast_reaches_every_live_node_exactly_once(deployment: Distributed) -> None:
    scenarios.broadcast_reaches_every_live_node_once(deployment)


def test_keyed_tasks_stick_to_one_node_and_move_when_it_dies(deployment: Distributed) -> None:
    scenarios.keyed_tasks_stick_to_a_node_and_move_when_it_dies(deployment)


def test_a_200_step_dag_completes_through_a_sigkill_with_no_step_succeeding_twice(deployment: Distributed) -> None:
    scenarios.dag_completes_through_a_sigkill(deployment)


def test_failure_policies_and_cancelling_a_workflow(deployment: Distributed) -> None:
    scenarios.failed_step_fails_or_skips_dependants_and_cancel_stops_the_rest(deployment)
