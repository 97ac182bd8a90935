"""Distributed end-to-end helpers: real ``python -m conveyor worker`` processes on RabbitMQ +
PostgreSQL.

Each test gets its own RabbitMQ vhost (``open_broker`` builds ``RabbitmqBroker(url)`` with the
default namespace, so the URL cannot carry one; a vhost isolates as well and is deleted with
everything in it) and its own PostgreSQL schema (``postgres_schema_url``). Workers run with
short leases and heartbeats so crash scenarios take seconds. Every process a test starts is
SIGKILLed in teardown (its whole session), whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import pytest

from conveyor.broker.rabbitmq import RabbitmqBroker
from conveyor.model import Task, TaskFilter
from conveyor.service import SubmitRequest, TaskService
from conveyor.store.postgres import PostgresStore
from tests.execlog import EXEC_LOG_ENV, Execution, read_executions
from tests.processes import REPO_ROOT, REPORT_KEY, WorkerProcess, wait_for

COUNTING_APP = "tests.integration.apps.counting"
LEASE_S = 3.0
HEARTBEAT_S = 1.0
GRACE_S = 5.0
PREFETCH = 8  # Settings.prefetch default (= concurrency, 8 here): a worker holds at most concurrency + this
READY_TIMEOUT_S = 20.0


# -- RabbitMQ administration -----------------------------------------------------------------


def rabbitmqctl(*args: str, timeout_s: float = 60.0) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout_s, check=True)
    return done.stdout


def rabbit_get_env(key: str) -> str:
    """The Erlang term ``application:get_env(rabbit, key)`` prints: ``{ok,Value}`` or ``undefined``."""
    return rabbitmqctl("eval", f"application:get_env(rabbit, {key}).").strip()


@contextlib.contextmanager
def rabbit_env(key: str, value: int) -> Iterator[None]:
    """Set a ``rabbit`` application variable for the block, then put back the previous value."""
    previous = rabbit_get_env(key)
    rabbitmqctl("eval", f"application:set_env(rabbit, {key}, {value}).")
    try:
        yield
    finally:
        if previous.startswith("{ok,") and previous.endswith("}"):
            rabbitmqctl("eval", f"application:set_env(rabbit, {key}, {previous[4:-1]}).")
        else:
            rabbitmqctl("eval", f"application:unset_env(rabbit, {key}).")


@contextlib.contextmanager
def rabbitmq_restarted(down_s: float = 2.0) -> Iterator[None]:
    """Stop the RabbitMQ application, keep it down ``down_s``, start it again (always)."""
    rabbitmqctl("stop_app")
    try:
        time.sleep(down_s)
        yield
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup", timeout_s=120)


@pytest.fixture
def vhost_url(rabbitmq_url: str) -> Iterator[str]:
    """An AMQP URL on a fresh vhost, deleted (with its queues) after the test."""
    vhost = f"conveyor-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield rabbitmq_url.rstrip("/") + "/" + quote(vhost, safe="")
    finally:
        rabbitmqctl("delete_vhost", vhost)


# -- executions --------------------------------------------------------------------------------


def run_counts(executions: Sequence[Execution]) -> Counter[str]:
    """How many times each task id was executed."""
    return Counter(e.task_id for e in executions)


# -- worker processes ----------------------------------------------------------------------------


class Cluster:
    """Worker processes and a submitting client on one vhost + schema; ``close`` kills them all."""

    def __init__(self, tmp_path: Path, broker_url: str, store_url: str) -> None:
        self.tmp_path = tmp_path
        self.broker_url = broker_url
        self.store_url = store_url
        self.exec_log = tmp_path / "executions.log"
        self.workers: list[WorkerProcess] = []
        self._service: TaskService | None = None

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update({
            "CONVEYOR_BROKER_URL": self.broker_url, "CONVEYOR_STORE_URL": self.store_url,
            "CONVEYOR_LEASE_S": str(LEASE_S), "CONVEYOR_HEARTBEAT_S": str(HEARTBEAT_S),
            "CONVEYOR_GRACE_S": str(GRACE_S), "CONVEYOR_LOG_LEVEL": "INFO", EXEC_LOG_ENV: str(self.exec_log),
            "CONVEYOR_OUTBOX_GRACE_S": "3",  # an unpublished intent (a crashed publisher) is sent after 3 s
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra or {})
        return env

    def start(self, node_id: str, *, concurrency: int = 8, extra_env: Mapping[str, str] | None = None,
              wait_ready: bool = True, app: str = COUNTING_APP, prefix: Sequence[str] = ()) -> WorkerProcess:
        """``prefix`` runs the worker under another command (``ip netns exec NS``, ``faketime``)."""
        log_path = self.tmp_path / f"worker-{node_id}-{len(self.workers)}.log"
        command = [*prefix, sys.executable, "-m", "conveyor", "worker", app, "--concurrency", str(concurrency),
                   "--node-id", node_id]
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                command, cwd=REPO_ROOT, env=self.env(extra_env), stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,  # own group: teardown kills children too
            )
        worker = WorkerProcess(node_id, proc, log_path, concurrency)
        self.workers.append(worker)
        if wait_ready:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: WorkerProcess, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Ready = registered as live in the store and consuming (it logs "started" after consume)."""

        def ready() -> bool:
            if not worker.alive():
                pytest.fail(f"worker {worker.node_id} exited with {worker.proc.returncode}:\n{worker.output()}")
            if f"worker {worker.node_id} started" not in worker.output():
                return False
            return any(n.id == worker.node_id and n.status == "live" and n.pid == worker.pid
                       for n in self.service.nodes())

        wait_for(ready, timeout_s, f"worker {worker.node_id} to start consuming")

    @property
    def service(self) -> TaskService:
        """A client like any other: TaskService on its own store pool and broker connection."""
        if self._service is None:
            from tests.integration.apps.counting import app

            self._service = TaskService(PostgresStore(self.store_url), RabbitmqBroker(self.broker_url),
                                        app.registry)
        return self._service

    def submit(self, requests: Sequence[SubmitRequest], *, threads: int = 8) -> list[Task]:
        """Submit through TaskService from ``threads`` client threads; returns the tasks in order."""
        service = self.service
        results: list[Task | None] = [None] * len(requests)
        errors: list[BaseException] = []

        def client(start: int) -> None:
            try:
                for i in range(start, len(requests), threads):
                    results[i] = service.submit(requests[i])[0]
            except BaseException as exc:
                errors.append(exc)

        pool = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        if errors:
            raise errors[0]
        return [t for t in results if t is not None]

    def wait_finished(self, total: int, timeout_s: float) -> dict[str, int]:
        """Wait until ``total`` tasks are final (succeeded, failed or cancelled); the status counts."""

        def finished() -> dict[str, int] | None:
            counts = self.service.counts()
            done = sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
            return counts if done >= total else None

        counts: dict[str, int] = wait_for(finished, timeout_s, f"{total} tasks to finish", pause_s=0.25)
        return counts

    def all_tasks(self) -> dict[str, Task]:
        tasks: dict[str, Task] = {}
        cursor = None
        while True:
            page = self.service.query(TaskFilter(), limit=1000, cursor=cursor)
            tasks.update((str(t.id), t) for t in page.tasks)
            if page.next_cursor is None:
                return tasks
            cursor = page.next_cursor

    def executions(self) -> list[Execution]:
        return read_executions(self.exec_log)

    def outputs(self) -> str:
        return "\n".join(f"--- {w.node_id} (pid {w.pid}) ---\n{w.output()}" for w in self.workers)

    def close(self) -> None:
        for worker in self.workers:
            worker.kill_all()
        if self._service is not None:
            service, self._service = self._service, None
            with contextlib.suppress(Exception):
                service.broker.close()
            service.store.close()


C = TypeVar("C", bound=Cluster)


def serve(nodes: C, request: pytest.FixtureRequest) -> Iterator[C]:
    """A cluster fixture's body: yield ``nodes``, then kill them, showing what the workers logged
    if the test failed."""
    try:
        yield nodes
    finally:
        nodes.close()
        report = request.node.stash.get(REPORT_KEY, None)
        if report is not None and report.failed:
            sys.stderr.write(nodes.outputs()[-20_000:])


@pytest.fixture
def cluster(tmp_path: Path, vhost_url: str, postgres_schema_url: str,
            request: pytest.FixtureRequest) -> Iterator[Cluster]:
    yield from serve(Cluster(tmp_path, vhost_url, postgres_schema_url), request)
