"""Flow control end to end on the embedded default (one SQLite file), with real worker
processes: the scenarios of ``tests/flow/scenarios.py`` (the same run on RabbitMQ + PostgreSQL
in ``tests/integration/test_flow_distributed.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from conveyor.config import Settings
from tests.e2e.conftest import HEARTBEAT_S, LEASE_S, Workers
from tests.execlog import EXEC_LOG_ENV, Execution, read_executions
from tests.flow import app as flow_app
from tests.flow import scenarios
from tests.processes import WorkerProcess

pytestmark = pytest.mark.timeout(180)


class Embedded:
    name = "sqlite"
    lease_s = LEASE_S
    heartbeat_s = HEARTBEAT_S

    def __init__(self, workers: Workers, url: str, exec_log: Path) -> None:
        self.workers = workers
        self.exec_log = exec_log
        self.app = flow_app.app
        self.app.close()
        self.app.use_settings(Settings(broker_url=url, store_url=url, lease_s=LEASE_S, heartbeat_s=HEARTBEAT_S))

    def start(self, node_ids: Sequence[str], concurrency: int = 8) -> list[WorkerProcess]:
        started = [self.workers.start(scenarios.APP_REF, node_id=n, concurrency=concurrency, wait_ready=False)
                   for n in node_ids]
        for worker in started:
            self.workers.wait_ready(worker)
        return started

    def executions(self) -> list[Execution]:
        return read_executions(self.exec_log)


@pytest.fixture
def deployment(workers: Workers, db_url: str, exec_log: Path) -> Iterator[Embedded]:
    os.environ[EXEC_LOG_ENV] = str(exec_log)  # handlers the test process runs inline log too
    embedded = Embedded(workers, db_url, exec_log)
    try:
        yield embedded
    finally:
        embedded.app.close()
        os.environ.pop(EXEC_LOG_ENV, None)


def test_unique_tasks_are_deduped_while_waiting_or_running(deployment: Embedded) -> None:
    scenarios.unique_tasks_dedupe_while_active(deployment)


def test_a_per_key_concurrency_limit_is_never_exceeded_through_a_sigkill(deployment: Embedded) -> None:
    scenarios.concurrency_limit_holds_through_a_sigkill(deployment)


def test_a_global_rate_limit_holds_within_ten_percent_on_three_nodes(deployment: Embedded) -> None:
    scenarios.rate_limit_holds_across_three_nodes(deployment, seconds=10)


@pytest.mark.skipif(not os.environ.get("CONVEYOR_TEST_LONG"), reason="30 s run: make flow-long")
@pytest.mark.timeout(300)
def test_a_global_rate_limit_holds_within_ten_percent_for_30_s(deployment: Embedded) -> None:
    scenarios.rate_limit_holds_across_three_nodes(deployment, seconds=30)


def test_a_broadcast_reaches_every_live_node_exactly_once(deployment: Embedded) -> None:
    scenarios.broadcast_reaches_every_live_node_once(deployment)


def test_keyed_tasks_stick_to_one_node_and_move_when_it_dies(deployment: Embedded) -> None:
    scenarios.keyed_tasks_stick_to_a_node_and_move_when_it_dies(deployment)


def test_a_200_step_dag_completes_through_a_sigkill_with_no_step_succeeding_twice(deployment: Embedded) -> None:
    scenarios.dag_completes_through_a_sigkill(deployment)


def test_failure_policies_and_cancelling_a_workflow(deployment: Embedded) -> None:
    scenarios.failed_step_fails_or_skips_dependants_and_cancel_stops_the_rest(deployment)
